"""The failure log numbers a request's attempts across invocations: a rerun continues at the next number."""
import yaml

from labnb.kv.cli import main
from labnb.kv.server import FaultScript, serve
from labnb.kv.store import KVStore


def test_attempt_numbers_continue_across_resumes(tmp_path):
    fs = FaultScript(["503", "503", "503", "ok", "ok", "ok", "503", "ok"] + ["ok"] * 20, answer="1234")
    with serve(fs, max_seconds=120) as url:
        cfg = {"group": "att", "out_dir": str(tmp_path / "att"),
               "engine": {"name": "openai_completions", "base_url": url, "model": "fault", "tokenizer": "tiny-llama",
                          "max_retries": 2, "backoff_s": 0.01, "max_new_tokens": 4},
               "prepare": {"tasks": [{"name": "synthetic_kv", "n_examples": 8, "params": {"n_keys": [4, 8]}}], "n_bins": 2, "per_bin": 2},
               "run": {"presses": ["knorm"], "budgets": [1.0]}}
        exp = tmp_path / "att.yaml"; exp.write_text(yaml.safe_dump(cfg))
        assert main(["prepare", str(exp), "-q"]) == 0
        assert main(["run", str(exp), "-q"]) == 0                      # first request: 3 failed attempts, final
        assert main(["run", str(exp), "-q", "--retry-failed"]) == 0    # rerun: one more failure, then success
    st = KVStore(tmp_path / "att" / "kv.sqlite")
    rows = st.query("SELECT example_id, attempt, final FROM failures ORDER BY id")
    assert len({r["example_id"] for r in rows}) == 1
    assert [(r["attempt"], r["final"]) for r in rows] == [(1, 0), (2, 0), (3, 1), (4, 0)]
    assert st.request_counts("none-ratio1")["completed"] == 4
