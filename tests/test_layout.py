"""The package layout: a foundation under one package per workflow; a workflow imports the foundation and its own
package only, the foundation imports no workflow, module-level imports have no cycle, and no private name crosses a
module boundary."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "labnb"
FOUNDATION = {"core", "store", "models", "hooks", "data", "embeddings", "runner", "sweep", "cli", "explore", "docs", "compat"}
# a new workflow adds its package name here (and its notebooks export to labnb/<name>/)
WORKFLOWS = {"rnd", "bandit", "fv", "llgbm", "kv"}

def module_of(path: Path) -> str:
    rel = path.relative_to(LIB).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("labnb",) + parts)

def imports(path: Path):
    "(imported module, names, at module level) for every labnb import in `path`, relative ones resolved."
    tree, mod = ast.parse(path.read_text()), module_of(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    top = {id(n) for n in tree.body} | {id(m) for n in tree.body if isinstance(n, ast.Try) for m in n.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "labnb": yield base, [a.name for a in node.names], id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "labnb": yield a.name, [], id(node) in top

MODULES = {module_of(p): p for p in sorted(LIB.rglob("*.py")) if p.name != "_modidx.py"}

def unit(mod: str) -> str:
    "The foundation module, or the workflow package, that `mod` belongs to."
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "labnb"

def resolve(base: str, names: list[str]) -> list[str]:
    "The modules an import statement loads: `from labnb.kv import store` is labnb.kv.store."
    subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
    return subs or [base]

def test_the_tree_is_a_foundation_and_five_packages():
    units = {unit(m) for m in MODULES} - {"labnb"}
    assert units == FOUNDATION | WORKFLOWS, units ^ (FOUNDATION | WORKFLOWS)
    for w in WORKFLOWS: assert (LIB / w / "__init__.py").is_file() and not (LIB / f"{w}.py").exists()

@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_follow_the_layers(mod):
    me = unit(mod)
    for base, names, _ in imports(MODULES[mod]):
        for target in resolve(base, names):
            u = unit(target)
            if me in WORKFLOWS: assert u in FOUNDATION or u in (me, "labnb"), f"{mod} imports {target}: another workflow"
            else: assert u not in WORKFLOWS, f"{mod} (foundation) imports {target}"
        if unit(base) != me:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{mod} imports private {private} from {base}"

def test_no_import_cycle_at_module_level():
    graph = {m: {t for b, n, top in imports(p) if top for t in resolve(b, n) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ imports nothing but compat; importing a.b.c runs a.b's __init__ first
    state = {}
    def visit(m, stack):
        state[m] = "open"
        for t in graph[m]:
            if state.get(t) == "open": raise AssertionError(" -> ".join(stack[stack.index(t):] + [t]) if t in stack else f"{m} -> {t}")
            if t not in state: visit(t, stack + [t])
        state[m] = "done"
    for m in MODULES:
        if m not in state: visit(m, [m])

def test_patching_through_a_package_reaches_its_module_and_is_undone(monkeypatch):
    "Code written for the flat modules patches `labnb.llgbm.X`: the patch must reach `labnb.llgbm.core` and go away."
    import labnb.llgbm, labnb.llgbm.core as core
    orig = core.make_config
    monkeypatch.setattr("labnb.llgbm.make_config", "first")
    monkeypatch.setattr(labnb.llgbm, "make_config", "second")
    assert core.make_config == "second" and labnb.llgbm.make_config == "second"
    monkeypatch.setattr(labnb.llgbm, "_not_there_before", 1, raising=False)
    monkeypatch.undo()
    assert core.make_config is orig and labnb.llgbm.make_config is orig and not hasattr(core, "_not_there_before")
