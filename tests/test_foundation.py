"End-to-end checks of the foundation: config errors, kill-and-resume, cache corruption, hooks on real models."
import os, signal, subprocess, sys, textwrap, time, json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from labnb.core import Config, ConfigError, load_config
from labnb.store import StatusTable, ArrayCache, CacheCorrupt, CacheMismatch
from labnb.models import tiny_model, model_spec, load_model
from labnb.hooks import read_heads, patch_heads, HeadPatch, head_weight, hook_module, add_to_resid


@dataclass
class Inner(Config):
    lr: float = 0.1
    steps: int = 10

@dataclass
class Outer(Config):
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_config_errors_name_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("inner:\n  steps: 1.5\n")
    with pytest.raises(ConfigError) as e: load_config(Outer, f)
    assert "inner.steps" in str(e.value) and str(f) in str(e.value)
    f.write_text("inner:\n  stepz: 1\n")
    with pytest.raises(ConfigError) as e: load_config(Outer, f)
    assert "inner.stepz" in str(e.value) and "unknown key" in str(e.value)
    with pytest.raises(ConfigError, match="inner.lr"): load_config(Outer, overrides=["inner.lr=fast"])


WORKER = textwrap.dedent("""
    import sys, time, json
    from pathlib import Path
    from labnb.store import StatusTable, atomic_write_json
    out = Path(sys.argv[1])
    st = StatusTable(out / "status.sqlite")
    def unit(u):
        time.sleep(0.25)
        val = int(u) ** 2
        atomic_write_json(out / f"{u}.json", {"value": val})
        return {"value": val}
    st.run([str(i) for i in range(12)], unit, progress=False)
""")

def _run_worker(out: Path, kill_after: float|None = None):
    script = out / "worker.py"; out.mkdir(parents=True, exist_ok=True); script.write_text(WORKER)
    p = subprocess.Popen([sys.executable, str(script), str(out)])
    if kill_after is None: assert p.wait(60) == 0; return
    st = StatusTable(out / "status.sqlite")
    deadline = time.time() + 60
    while time.time() < deadline:
        if st.counts()["completed"] >= 4: break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL); p.wait()


def test_sigkill_resume_recomputes_nothing_completed(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    _run_worker(killed, kill_after=1.0)
    st = StatusTable(killed / "status.sqlite")
    done_before = {r.unit: r.finished for r in st.rows(status="completed")}
    assert 4 <= len(done_before) < 12
    _run_worker(killed)
    rows = {r.unit: r for r in st.rows()}
    assert all(r.status == "completed" for r in rows.values())
    for u, finished in done_before.items():          # completed units were not run again
        assert rows[u].attempts == 1 and rows[u].finished == finished
    assert sum(r.attempts for r in rows.values()) <= 13  # at most the unit in flight at the kill ran twice
    _run_worker(clean)
    for i in range(12):
        assert json.loads((killed / f"{i}.json").read_text()) == json.loads((clean / f"{i}.json").read_text())
    assert {u: r.result for u, r in rows.items()} == {r.unit: r.result for r in StatusTable(clean / "status.sqlite").rows()}


def test_corrupt_and_mismatched_cache(tmp_path):
    cache, calls = ArrayCache(tmp_path), []
    man = {"model_id": "m", "revision": "r", "dtype": "float32", "tokenizer": "t", "pooling": "mean", "layer": 3,
           "dataset": "d", "text_field": "text"}
    def compute(): calls.append(1); return {"emb": np.random.default_rng(0).normal(size=(5, 4))}
    cache.get_or_compute("e", man, compute)
    f = cache.entry("e") / "emb.npy"
    data = bytearray(f.read_bytes()); data[200] ^= 1; f.write_bytes(bytes(data))
    with pytest.raises(CacheCorrupt): cache.load("e", man)
    arr = cache.get_or_compute("e", man, compute)["emb"]
    assert len(calls) == 2 and np.allclose(arr, compute()["emb"])
    with pytest.raises(CacheMismatch, match="layer"): cache.load("e", {**man, "layer": 4})
    f.unlink()
    with pytest.raises(CacheCorrupt, match="missing"): cache.load("e", man)


@pytest.mark.parametrize("arch", ["bert", "gemma3_text", "gpt2", "gpt_neox", "llama"])   # every architecture: test_archs.py
def test_head_patching_every_arch(arch):
    m, tok = tiny_model(arch)
    s = model_spec(m)
    x = tok(["patching heads", "in every arch"], return_tensors="pt", padding=True)
    f = lambda: (lambda o: o.logits if hasattr(o, "logits") else o.last_hidden_state)(m(**x))
    with torch.no_grad():
        with read_heads(m) as cache: clean = f()
        with patch_heads(m, [HeadPatch(l, h, cache[l][:, :, h]) for l in range(s.n_layers) for h in range(s.n_heads)]):
            same = f()
        assert torch.allclose(same, clean, atol=1e-6)
        proj, out = s.attn_out_proj(m, 0), {}
        with hook_module(proj, lambda mod, a, o: out.__setitem__("c", o)): f()
        with patch_heads(m, [HeadPatch(0, 1, torch.zeros(s.d_head))]), hook_module(proj, lambda mod, a, o: out.__setitem__("z", o)):
            f()
        assert torch.allclose(out["z"], out["c"] - cache[0][:, :, 1] @ head_weight(proj, 1, s.d_head), atol=1e-5)


@pytest.mark.parametrize("name,layer", [("smollm2-135m", 7), ("minilm", 2)])
def test_hooks_on_real_models(name, layer):
    m, tok = load_model(name)
    s = model_spec(m)
    x = tok(["The Eiffel Tower is in the city of"], return_tensors="pt")
    f = lambda: (lambda o: o.logits if hasattr(o, "logits") else o.last_hidden_state)(m(**x))
    with torch.no_grad():
        with read_heads(m, [layer]) as cache: clean = f()
        assert cache[layer].shape[2:] == (s.n_heads, s.d_head)
        with patch_heads(m, [HeadPatch(layer, h, cache[layer][:, :, h]) for h in range(s.n_heads)]): same = f()
        assert torch.allclose(same, clean, atol=1e-4)
        proj, out = s.attn_out_proj(m, layer), {}
        with hook_module(proj, lambda mod, a, o: out.__setitem__("c", o)): f()
        with patch_heads(m, [HeadPatch(layer, 2, torch.zeros(s.d_head))]), hook_module(proj, lambda mod, a, o: out.__setitem__("z", o)):
            zeroed = f()
        assert torch.allclose(out["z"], out["c"] - cache[layer][:, :, 2] @ head_weight(proj, 2, s.d_head), atol=1e-4)
        assert (zeroed - clean).abs().max() > 1e-5
        with add_to_resid(m, layer, torch.zeros(s.d_model)): assert torch.allclose(f(), clean, atol=1e-5)
