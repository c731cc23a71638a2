"""The docs site, built from every notebook's committed outputs in a scratch home (nothing executed, nothing written
under results/): every page, every library page's API entries, run pages with their findings, search, math, and a
crawl that finds no broken link, anchor or image; a broken anchor fails the build; notebooks saved by JupyterLab clean
back to their committed bytes."""
import html, json, re, shutil, time
from pathlib import Path

import nbformat
import pytest

from labnb.cli import SKIP_EXEC, main
from labnb.core import paths
from labnb.docs import (WIDGET_STATE, WIDGET_VIEW, DocsError, _directives, _src, api_names, build_docs, check_site, clean_notebook,
                        clean_notebooks, find_pages, front_matter, module_name, stage)
from labnb.runner import scratch_home

REPO = paths().home


def _files(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} if d.exists() else {}


@pytest.fixture(scope="module")
def site():
    "Every notebook of the repository plus a freshly promoted smoke run, built once: (home, site, crawl, results before, after, seconds)."
    with scratch_home() as h:
        shutil.copytree(REPO / "nbs", h / "nbs", dirs_exist_ok=True)
        shutil.copy(REPO / "mkdocs.yml", h / "mkdocs.yml")
        assert main(["run", "smoke", "-q"]) == 0
        run_id = (h / "results" / "smoke" / "index.csv").read_text().splitlines()[1].split(",")[0]
        assert main(["promote", f"results/smoke/{run_id}", "smoke_run"]) == 0
        before = _files(h / "results")
        t0 = time.time()
        out = build_docs(h / "_docs", engine="mkdocs")
        seconds = time.time() - t0
        yield h, out, check_site(out), before, _files(h / "results"), seconds


def test_promote_then_docs_site(site):
    h, out, rep, *_ = site
    nb = nbformat.read(h / "nbs" / "runs" / "smoke_run.ipynb", as_version=4)
    assert (nb.cells[0].cell_type, nb.cells[0].source) == ("raw", SKIP_EXEC) and str(h) not in json.dumps(nb)
    assert sorted(p.href for p in find_pages(h / "nbs")) == rep["pages"]                # every notebook has a page
    run_page = (out / "runs" / "smoke_run.html").read_text()
    imgs = re.findall(r'<img[^>]*src="([^"]+\.png)"', run_page)
    assert imgs and all((out / "runs" / i).is_file() for i in imgs) and "test_mse" in run_page  # the run's figure and metrics
    assert 'href="../runner.html"' in run_page                                           # the sidebar, relative to the page
    assert 'id="labnb.runner.run_template"' in (out / "runner.html").read_text()         # API reference


def test_crawl_finds_no_broken_link_anchor_or_image(site):
    _, out, rep, *_ = site
    assert rep["broken"] == [], rep["broken"][:20]
    assert rep["images"] >= 10 and len(rep["pages"]) == len(find_pages(site[0] / "nbs"))


def test_every_library_page_has_its_api_reference(site):
    h, out, *_ = site
    missing = {}
    for p in find_pages(h / "nbs"):
        if p.section != "library": continue
        nb = json.loads(p.src.read_text())
        mod, text = module_name(nb), (out / p.href).read_text()
        assert "could not be generated" not in text, p.href
        names = [n for c in nb["cells"] if c["cell_type"] == "code" for d, body in [_directives(_src(c))]
                 if "export" in d or "exports" in d for n in api_names(body)]
        lost = [n for n in names if f'id="{mod}.{n}"' not in text]
        if lost: missing[p.href] = lost
    assert missing == {}, missing


def test_names_link_to_their_own_page(site):
    h, out, *_ = site
    rnd = (out / "rnd.core.html").read_text()
    links = set(re.findall(r'href="([^"]*#[^"]*evaluate)"', rnd))
    assert links == {"#labnb.rnd.core.evaluate"}, links                       # not llgbm.html#evaluate
    assert 'class="doc-section-title">Parameters' in "".join((out / p).read_text() for p in ("rnd.core.html", "embeddings.html", "llgbm.lora.html"))


def test_run_pages_open_with_findings_and_show_progress_as_text(site):
    h, out, *_ = site
    runs = [p for p in find_pages(h / "nbs") if p.section == "runs" and p.src.name != "smoke_run.ipynb"]
    descriptions = {}
    for p in runs:
        nb = json.loads(p.src.read_text())
        fm = front_matter(nb)
        descriptions[p.src.stem] = fm.get("description", "")
        top = next(_src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
        assert "**Found:**" in top and "**Reproduce" in top and "```bash" in top, p.src.name
        assert not any(WIDGET_VIEW in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])), p.src.name
        assert WIDGET_STATE not in json.dumps(nb["metadata"]), p.src.name
        text = (out / p.href).read_text()
        assert "interactive widget" not in text and "**Found:**" not in text and "<strong>Found:</strong>" in text, p.href
    assert len(set(descriptions.values())) == len(runs) and all(len(d) > 40 and d.endswith((".", "?")) for d in descriptions.values()), descriptions
    assert "100%|██████████|" in (out / "runs" / "fv_qwise_smollm2.html").read_text()     # tqdm bars as their final text


def test_search_math_and_highlighting(site):
    h, out, *_ = site
    index = json.loads((out / "search" / "search_index.json").read_text())
    assert any("function vector" in d["text"].lower() and d["location"].startswith("runs/") for d in index["docs"])
    rnd = (out / "rnd.core.html").read_text()
    assert 'class="arithmatex"' in rnd and "assets/labnb/tex-svg.js" in rnd and (out / "assets/labnb/tex-svg.js").is_file()
    assert '<div class="highlight"><pre>' in rnd and 'class="md-nav md-nav--secondary"' in rnd   # code, "on this page"


def test_build_writes_nothing_under_results_and_is_incremental(site):
    h, out, rep, before, after, seconds = site
    assert before == after and not (h / "results" / "smoke" / "interactive").exists()
    src, pages = h / ".cache" / "docs" / "src", find_pages(h / "nbs")
    assert stage(pages, src) == []                                              # nothing changed: nothing re-processed
    run = h / "nbs" / "runs" / "smoke_run.ipynb"
    nb = json.loads(run.read_text()); nb["cells"].append({"cell_type": "markdown", "id": "extra", "metadata": {}, "source": "More."})
    run.write_text(json.dumps(nb))
    assert stage(find_pages(h / "nbs"), src) == ["runs/smoke_run.md"]
    lib = h / "nbs" / "11_rnd.core.ipynb"                                           # a new heading: its page and the pages linking it
    nb = json.loads(lib.read_text()); nb["cells"].append({"cell_type": "markdown", "id": "extra", "metadata": {}, "source": "## A new section"})
    lib.write_text(json.dumps(nb))
    again = stage(find_pages(h / "nbs"), src)
    assert "rnd.core.md" in again and len(again) < len(pages) // 2, again
    assert seconds < 150, seconds


def _nb(*cells):
    return nbformat.writes(nbformat.v4.new_notebook(cells=list(cells), metadata={"kernelspec": {"name": "labnb", "display_name": "labnb", "language": "python"}}))


@pytest.mark.parametrize("bad, why", [("[a heading](#no-such-heading)", "no-such-heading"),
                                      ("![](no_such_figure.png)", "no_such_figure.png"),
                                      ("[gone](02_gone.ipynb)", "02_gone.ipynb")])
def test_a_broken_link_fails_the_build(bad, why, capsys):
    with scratch_home(templates_=()) as h:
        (h / "nbs" / "index.ipynb").write_text(_nb(nbformat.v4.new_markdown_cell(f"# home\n\n> The front page.\n\n## One\n\nSee {bad}.")))
        with pytest.raises(DocsError, match=r"^nbs/index\.ipynb: .*" + re.escape(why)):
            build_docs(h / "_docs", engine="mkdocs")
        assert not (h / "_docs").exists()                                         # nothing half-written
        capsys.readouterr()
        assert main(["docs", "--out", str(h / "_docs")]) == 2                    # the command: one line, status 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "nbs/index.ipynb" in err and why in err and str(h) not in err, err


def test_jupyterlab_save_cleans_back_to_the_committed_bytes():
    with scratch_home(templates_=()) as h:
        for name in ("runs/fv_qwise_smollm2.ipynb", "runs/smoke_overfit.ipynb", "01_store.ipynb"):
            committed = (REPO / "nbs" / name).read_text()
            dest = h / "nbs" / name; dest.parent.mkdir(parents=True, exist_ok=True)
            nb = json.loads(committed)                                            # what a JupyterLab save adds
            nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}
            nb["metadata"]["widgets"] = {WIDGET_STATE: {"state": {"m1": {"model_name": "HBoxModel", "state": {"children": []}}},
                                                        "version_major": 2, "version_minor": 0}}
            code = next(c for c in nb["cells"] if c["cell_type"] == "code")
            code["outputs"] = code.get("outputs", []) + [{"output_type": "display_data", "metadata": {},
                                                          "data": {WIDGET_VIEW: {"model_id": "m1", "version_major": 2}, "text/plain": "w"}}]
            code["execution_count"], code["metadata"]["execution"] = 7, {"iopub.status.idle": "2026-11-29T10:00:00Z"}
            dest.write_text(json.dumps(nb, indent=1))
            assert clean_notebooks(dest) == [dest]
            cleaned = json.loads(dest.read_text())
            assert "language_info" not in cleaned["metadata"] and "widgets" not in cleaned["metadata"], name
            assert not any(WIDGET_VIEW in o.get("data", {}) for c in cleaned["cells"] for o in c.get("outputs", [])), name
            code_out = next(c for c in cleaned["cells"] if c["cell_type"] == "code")["outputs"]
            code_out.pop()                                                        # the added widget, now its text
            cleaned_text = json.dumps(cleaned)
            assert json.loads(cleaned_text) == json.loads(committed), name


def test_committed_notebooks_are_in_clean_form():
    dirty = []
    for p in sorted((REPO / "nbs").rglob("*.ipynb")):
        if any(part.startswith((".", "_")) for part in p.relative_to(REPO / "nbs").parts): continue
        text = p.read_text()
        nb = json.loads(text)
        before = json.dumps(nb, sort_keys=True)
        if json.dumps(clean_notebook(nb, path=p.parent), sort_keys=True) != before: dirty.append(p.relative_to(REPO).as_posix())
    assert dirty == [], f"run `python -c 'from labnb.docs import clean_notebooks; clean_notebooks()'`: {dirty}"


def test_jupyter_server_save_runs_the_clean_hook(tmp_path):
    "A notebook saved through Jupyter server's contents manager (what JupyterLab's save does) is written clean."
    from jupyter_server.services.contents.filemanager import FileContentsManager
    from labnb.docs import install_jupyter_hook
    hook = json.loads(install_jupyter_hook(prefix=tmp_path).read_text())["ContentsManager"]["pre_save_hook"]
    with scratch_home(templates_=()) as h:
        cm = FileContentsManager(root_dir=str(h), pre_save_hook=hook)
        committed = (REPO / "nbs" / "runs" / "smoke_overfit.ipynb").read_text()
        nb = json.loads(committed)
        nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7"}
        nb["metadata"]["widgets"] = {WIDGET_STATE: {"state": {}, "version_major": 2, "version_minor": 0}}
        saved = json.dumps(nb)
        (h / "nbs" / "runs").mkdir(parents=True)
        cm.save({"type": "notebook", "format": "json", "content": json.loads(saved)}, "nbs/runs/smoke_overfit.ipynb")
        assert json.loads((h / "nbs" / "runs" / "smoke_overfit.ipynb").read_text()) == json.loads(committed)
    other = tmp_path / "other"; other.mkdir()                                     # outside any labnb repository: untouched
    FileContentsManager(root_dir=str(other), pre_save_hook=hook).save({"type": "notebook", "format": "json", "content": json.loads(saved)}, "x.ipynb")
    assert "language_info" in json.loads((other / "x.ipynb").read_text())["metadata"]


def test_without_mkdocs_the_command_says_what_to_install(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "mkdocs.commands.build", None)              # as if the docs extra were not installed
    with scratch_home(templates_=()) as h:
        assert main(["docs", "--out", str(h / "_docs")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "pip install -e '.[docs]'" in err and not (h / "_docs").exists(), err
