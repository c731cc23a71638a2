"""No secret is ever persisted or printed: a run with `engine.api_key: ${OPENAI_API_KEY}` (a sentinel value) leaves
the value in no file of the group (SQLite, manifest, analysis, report) and in no CLI output or log line."""
import logging
from pathlib import Path

import yaml

from labnb.kv.cli import main
from labnb.kv.server import FaultScript, serve

SENTINEL = "sk-SENTINEL-7d1f0c2b9a"


def test_api_key_never_written_nor_printed(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    caplog.set_level(logging.DEBUG)
    fs = FaultScript(["503", "ok"] + ["ok"] * 40, answer="1234")
    with serve(fs, max_seconds=120) as url:
        cfg = {"group": "sec", "out_dir": str(tmp_path / "sec"),
               "engine": {"name": "openai_completions", "base_url": url, "model": "fault", "tokenizer": "tiny-llama",
                          "api_key": "${OPENAI_API_KEY}", "max_retries": 1, "backoff_s": 0.01, "max_new_tokens": 4},
               "prepare": {"tasks": [{"name": "synthetic_kv", "n_examples": 8, "params": {"n_keys": [4, 8]}}], "n_bins": 2, "per_bin": 2},
               "run": {"presses": ["knorm"], "budgets": [1.0, 0.5]}, "analyze": {"n_boot": 200}}
        exp = tmp_path / "sec.yaml"
        exp.write_text(yaml.safe_dump(cfg))
        for cmd in ("validate", "resolve", "all", "analyze"):
            assert main([cmd, str(exp), "-q"]) == 0, cmd
        # an error path: a bad override is reported without the key
        assert main(["run", str(exp), "-q", "-s", "run.budgets=[1.0, 7]"]) == 2
    out = capsys.readouterr()
    printed = out.out + out.err + caplog.text
    assert SENTINEL not in printed
    assert "${OPENAI_API_KEY} (redacted)" in out.out                      # resolve says where the key comes from
    files = [p for p in (tmp_path / "sec").rglob("*") if p.is_file()]
    assert any(p.name == "kv.sqlite" for p in files) and any(p.name == "report.md" for p in files)
    for p in files:                                                      # sqlite (+ WAL), manifest, csv, figures, report
        assert SENTINEL.encode() not in p.read_bytes(), p
    from labnb.kv.store import KVStore
    st = KVStore(tmp_path / "sec" / "kv.sqlite")
    assert {r["config"]["engine"]["api_key"] for r in st.runs()} == {"${OPENAI_API_KEY} (redacted)"}
