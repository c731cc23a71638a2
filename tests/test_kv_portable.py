"""manifest.json is portable (per-entry token lengths, a content-addressed examples file beside it); prepare and
analyze skip work whose inputs are unchanged; `score` and `analyze` take `--run-id`."""
import json, shutil
from pathlib import Path

import pytest
import yaml

import labnb.kv.analyze as kva
import labnb.kv.engines as kve
import labnb.kv.prepare as kvp
from labnb.kv.cli import main
from labnb.kv.config import load_kv_config
from labnb.kv.store import KVStore


def write_exp(tmp_path, name="port", **over) -> Path:
    cfg = {"group": name, "out_dir": str(tmp_path / name), "engine": {"model": "tiny-llama", "max_new_tokens": 2, "threads": 1},
           "prepare": {"tasks": [{"name": "synthetic_kv", "n_examples": 10, "params": {"n_keys": [4, 8]}}], "n_bins": 2, "per_bin": 2},
           "run": {"presses": ["knorm"], "budgets": [1.0, 0.5]}, "analyze": {"n_boot": 200}}
    cfg.update(over)
    f = tmp_path / f"{name}.yaml"; f.write_text(yaml.safe_dump(cfg)); return f


def test_manifest_is_portable(tmp_path):
    exp = write_exp(tmp_path)
    assert main(["prepare", str(exp), "-q"]) == 0
    root = tmp_path / "port"
    man = json.loads((root / "manifest.json").read_text())
    entries = man["tasks"]["synthetic_kv"]["entries"]
    assert len(entries) == man["tasks"]["synthetic_kv"]["n_pool"] and all(isinstance(e["n_tokens"], int) for e in entries)
    ex_file = root / man["examples_file"]
    assert ex_file.name == f"examples-{man['dataset_hash']}.jsonl" and len(ex_file.read_text().splitlines()) == man["n_examples"]
    # the folder without its SQLite file, on another machine: the run reads the examples from the file
    other = tmp_path / "elsewhere"; other.mkdir()
    for f in ("manifest.json", man["examples_file"]): shutil.copy(root / f, other / f)
    assert main(["run", str(exp), "-q", "-s", f"out_dir={other}"]) == 0
    st = KVStore(other / "kv.sqlite")
    assert st.query("SELECT COUNT(*) AS n FROM responses")[0]["n"] == 2 * 4
    assert {e["example_id"]: e["n_tokens"] for e in st.examples()} == {e["example_id"]: e["n_tokens"] for e in entries}
    (other / man["examples_file"]).write_text("{}\n")                     # a damaged examples file is named
    (other / "kv.sqlite").unlink(); Path(str(other / "kv.sqlite") + "-wal").unlink(missing_ok=True)
    assert main(["run", str(exp), "-q", "-s", f"out_dir={other}"]) == 2


def test_prepare_skips_tokenizing_when_dataset_and_tokenizer_are_unchanged(tmp_path, monkeypatch):
    exp = write_exp(tmp_path)
    cfg = load_kv_config(exp)
    first = kvp.prepare(cfg, progress=False)
    def boom(*a, **k): raise AssertionError("tokenized again")
    loaded, load = [], kvp.load_tokenizer
    monkeypatch.setattr(kve, "count_prompt_tokens", boom)                 # the examples are not tokenized again;
    monkeypatch.setattr(kvp, "load_tokenizer", lambda n: loaded.append(n) or load(n))  # the tokenizer is loaded: its
    again = kvp.prepare(cfg, progress=False)                                         # behaviour is part of the key
    assert again["created"] == first["created"] and again["dataset_hash"] == first["dataset_hash"] and loaded
    with pytest.raises(AssertionError, match="tokenized again"):       # another dataset is tokenized
        kvp.prepare(load_kv_config(exp, ["prepare.seed=1"]), progress=False)
    with pytest.raises(AssertionError, match="tokenized again"):       # another tokenizer too
        kvp.prepare(load_kv_config(exp, ["engine.tokenizer=tiny-gpt2"]), progress=False)


def test_analyze_skips_when_scores_and_config_are_unchanged(tmp_path, monkeypatch):
    st = kva.synthetic_store(tmp_path / "kv.sqlite", n_per_bin=5, bins=2, budgets=(1.0, 0.5))
    from labnb.kv.score import score_store
    score_store(st, progress=False)
    cfg = kva.AnalysisConfig(n_boot=200)
    first = kva.analyze(st, cfg=cfg)
    calls = []
    real = kva.compute_analysis
    monkeypatch.setattr(kva, "compute_analysis", lambda *a, **k: calls.append(1) or real(*a, **k))
    kva.analyze(st, cfg=cfg); assert calls == []                       # unchanged: read back
    kva.analyze(st, cfg=kva.AnalysisConfig(n_boot=200, threshold=0.3)); assert calls == [1]   # another config
    row = st.query("SELECT run_id, example_id, em FROM scores LIMIT 1")[0]
    st.query("UPDATE scores SET em = 1 - em WHERE run_id=? AND example_id=?", (row["run_id"], row["example_id"]))
    kva.analyze(st, cfg=cfg); assert calls == [1, 1]                   # another score


def test_score_and_analyze_take_run_ids(tmp_path, capsys):
    exp = write_exp(tmp_path)
    assert main(["prepare", str(exp), "-q"]) == 0 and main(["run", str(exp), "-q"]) == 0
    capsys.readouterr()
    assert main(["score", str(exp), "-q", "--run-id", "knorm-ratio0.5"]) == 0
    st = KVStore(tmp_path / "port" / "kv.sqlite")
    assert {r["run_id"] for r in st.query("SELECT DISTINCT run_id FROM scores")} == {"knorm-ratio0.5"}
    assert main(["analyze", str(exp), "-q", "--run-id", "none-ratio1", "knorm-ratio0.5"]) == 0
    assert (tmp_path / "port" / "analysis" / "runs-none-ratio1+knorm-ratio0.5" / "transition_summary.csv").is_file()
    capsys.readouterr()
    assert main(["score", str(exp), "-q", "--run-id", "snapkv-ratio9"]) == 2
    assert "--run-id" in capsys.readouterr().err
