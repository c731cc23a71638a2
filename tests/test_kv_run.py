"""KV workflow end to end on a tiny model: prepare -> run -> score -> report through the CLI; per-request resume after
SIGKILL; guardrails against mixing datasets, tokenizers and templates; a run through the HTTP engine against the fault
server (every failed attempt persisted; --retry-failed)."""
import os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import yaml

from labnb.kv.cli import main
from labnb.kv.config import load_kv_config
from labnb.kv.store import KVStore

ROOT = Path(__file__).resolve().parents[1]


def write_exp(tmp_path, name="exp", **over) -> Path:
    cfg = {"group": name, "out_dir": str(tmp_path / name),
           "engine": {"model": "tiny-llama", "max_new_tokens": 4, "threads": 1},
           "prepare": {"tasks": [{"name": "synthetic_kv", "n_examples": 12, "params": {"n_keys": [4, 16]}}],
                       "n_bins": 2, "per_bin": 3},
           "run": {"presses": ["snapkv", "knorm"], "budgets": [1.0, 0.5, 0.25]},
           "analyze": {"n_boot": 200}}
    for k, v in over.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents: node = node.setdefault(p, {})
        node[leaf] = v
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_end_to_end_prepare_to_report(tmp_path, capsys):
    exp = write_exp(tmp_path)
    t0 = time.perf_counter()
    assert main(["all", str(exp), "-q"]) == 0
    took = time.perf_counter() - t0
    root = tmp_path / "exp"
    st = KVStore(root / "kv.sqlite")
    assert {r["run_id"]: r["status"] for r in st.runs()} == {
        "none-ratio1": "completed", "snapkv-ratio0.5": "completed", "snapkv-ratio0.25": "completed",
        "knorm-ratio0.5": "completed", "knorm-ratio0.25": "completed"}
    assert st.query("SELECT COUNT(*) AS n FROM responses")[0]["n"] == 5 * 6
    assert st.query("SELECT COUNT(*) AS n FROM scores")[0]["n"] == 5 * 6
    res = st.results()
    kv = res.groupby("run_id").kv_cache_bytes.mean()
    assert kv["snapkv-ratio0.25"] < kv["snapkv-ratio0.5"] < kv["none-ratio1"]
    report = (root / "report.md").read_text()
    assert "snapkv" in report and len(report) > 500
    assert (root / "manifest.json").exists()
    assert took < 300, took                                            # seconds on an idle laptop; bounded on a loaded one


def test_resume_after_sigkill(tmp_path):
    exp = write_exp(tmp_path, "kill", **{"engine.max_new_tokens": 24, "prepare.per_bin": 6, "run.budgets": [1.0, 0.5]})
    assert main(["prepare", str(exp), "-q"]) == 0
    db = tmp_path / "kill" / "kv.sqlite"
    code = f"import sys; from labnb.kv.cli import main; sys.exit(main(['run', {str(exp)!r}, '-q']))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    st, deadline = KVStore(db), time.time() + 120
    try:
        while time.time() < deadline:                                   # kill once some, not all, responses are in
            n = st.query("SELECT COUNT(*) AS n FROM responses")[0]["n"] if st.query("SELECT name FROM sqlite_master WHERE name='runs'") else 0
            if n >= 5: break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally: proc.wait()
    done_before = {(r["run_id"], r["example_id"]): r["text"] for r in st.query("SELECT * FROM responses")}
    total = 3 * 12                                                      # none + 2 presses at 0.5, 12 examples
    assert 5 <= len(done_before) < total, len(done_before)
    assert main(["run", str(exp), "-q"]) == 0                           # resume in this process
    rows = st.query("SELECT q.run_id, q.example_id, q.attempts, r.text FROM requests q JOIN responses r USING (run_id, example_id)")
    assert len(rows) == total
    for r in rows:                                                      # completed work was neither redone nor changed
        if (r["run_id"], r["example_id"]) in done_before:
            assert r["attempts"] == 1 and r["text"] == done_before[(r["run_id"], r["example_id"])]
    assert sum(r["attempts"] == 2 for r in rows) <= 1                   # at most the request in flight ran twice
    # the resumed results equal an uninterrupted run
    exp2 = write_exp(tmp_path, "clean", **{"engine.max_new_tokens": 24, "prepare.per_bin": 6, "run.budgets": [1.0, 0.5]})
    assert main(["prepare", str(exp2), "-q"]) == 0 and main(["run", str(exp2), "-q"]) == 0
    clean = {(r["run_id"], r["example_id"]): r["text"] for r in KVStore(tmp_path / "clean" / "kv.sqlite").query("SELECT * FROM responses")}
    assert clean == {(r["run_id"], r["example_id"]): r["text"] for r in rows}


def test_guardrails(tmp_path, capsys):
    exp = write_exp(tmp_path, "guard", **{"run.budgets": [1.0, 0.5], "run.presses": ["knorm"]})
    assert main(["prepare", str(exp), "-q"]) == 0 and main(["run", str(exp), "-q"]) == 0
    capsys.readouterr()
    # another dataset (a different seed) prepared into the same group: the existing runs refuse it
    assert main(["prepare", str(exp), "-q", "-s", "prepare.seed=1"]) == 0
    assert main(["run", str(exp), "-q", "-s", "prepare.seed=1"]) == 2
    assert "dataset_hash differs" in capsys.readouterr().err
    # another tokenizer or prompt template than the examples were prepared with
    assert main(["run", str(exp), "-q", "-s", "prepare.seed=1", "-s", "engine.tokenizer=smollm2-135m"]) == 2
    assert "tokenizer differs" in capsys.readouterr().err
    assert main(["run", str(exp), "-q", "-s", "prepare.seed=1", "-s", "prepare.tasks=[{name: synthetic_kv, n_examples: 12, template: kv_json, params: {n_keys: [4, 16]}}]"]) == 2
    assert "prompt_template_hash differs" in capsys.readouterr().err
    # --force lets the new dataset in, and records it
    assert main(["run", str(exp), "-q", "-s", "prepare.seed=1", "--force"]) == 0
    st = KVStore(tmp_path / "guard" / "kv.sqlite")
    man = yaml.safe_load((tmp_path / "guard" / "manifest.json").read_text())
    assert {r["dataset_hash"] for r in st.runs()} == {man["dataset_hash"]}
    # bad config values exit 2 naming the key
    assert main(["validate", str(exp), "-s", "run.presses=[snapkv, zip]"]) == 2
    assert "run.presses[1]" in capsys.readouterr().err


def test_http_run_against_fault_server_persists_failures(tmp_path):
    from labnb.kv.server import FaultScript, serve
    fs = FaultScript(["429", "500", "ok", "503", "503", "503"] + ["ok"] * 40, answer="1234")
    with serve(fs, max_seconds=120) as url:
        exp = write_exp(tmp_path, "http", **{"engine.name": "openai_completions", "engine.base_url": url, "engine.model": "fault",
                                             "engine.tokenizer": "tiny-llama", "engine.max_retries": 2, "engine.backoff_s": 0.01,
                                             "engine.max_concurrency": 1, "run.presses": ["knorm"], "run.budgets": [1.0, 0.5]})
        assert main(["prepare", str(exp), "-q"]) == 0
        assert main(["run", str(exp), "-q"]) == 0
        st = KVStore(tmp_path / "http" / "kv.sqlite")
        fails = st.query("SELECT error_type, status_code, final FROM failures ORDER BY id")
        assert [(f["error_type"], f["final"]) for f in fails] == [("HTTP_429", 0), ("HTTP_5XX", 0), ("HTTP_5XX", 0), ("HTTP_5XX", 0), ("HTTP_5XX", 1)]
        assert st.request_counts("none-ratio1") == {"pending": 0, "running": 0, "completed": 5, "failed": 1}
        bad = st.query("SELECT * FROM responses WHERE error_type IS NOT NULL")
        assert len(bad) == 1 and bad[0]["error_type"] == "HTTP_5XX"
        assert all(b["kv"]["budget"] in (1.0, 0.5) for b in fs.requests)   # the budget travels with every request
        assert main(["run", str(exp), "-q"]) == 0 and st.request_counts("none-ratio1")["failed"] == 1   # not retried by default
        assert main(["run", str(exp), "-q", "--retry-failed"]) == 0
        assert st.request_counts("none-ratio1")["completed"] == 6
        ok = st.query("SELECT ttfb_s, latency_s, completion_tokens FROM responses WHERE error_type IS NULL")
        assert all(r["ttfb_s"] is not None and r["ttfb_s"] <= r["latency_s"] for r in ok)


class BudgetEngine:
    "A stand-in engine whose accuracy is a known function of the budget: all right at >= 0.5, ~1/2 at 0.25, ~1/4 below."
    name = "budget-stub"
    def generate(self, req, on_failure=None, on_text=None):
        from labnb.kv.engines import GenResult
        value = next(l.split(": ")[1] for l in req.context.splitlines() if l.startswith(req.question.split("Key: ")[-1] + ": "))
        import hashlib
        coin = int(hashlib.md5(req.question.encode()).hexdigest(), 16) % 4   # fixed per example
        right = req.budget >= 0.5 or (req.budget >= 0.25 and coin < 2) or coin == 0
        return GenResult(text=" " + (value if right else "0"), finish_reason="stop", prompt_tokens=10, completion_tokens=1,
                         latency_s=0.0, ttfb_s=0.0, kv_cache_bytes=int(1000 * req.budget))


def test_focus_transition_adds_reserve_examples_next_to_the_transition(tmp_path):
    from labnb.kv.prepare import prepare
    from labnb.kv.run import KVRunner
    exp = write_exp(tmp_path, "focus", **{"prepare.tasks": [{"name": "synthetic_kv", "n_examples": 30, "params": {"n_keys": [4, 16]}}],
                                           "run.presses": ["knorm"], "run.budgets": [1.0, 0.5, 0.25, 0.1],
                                           "run.sampling": "focus_transition", "run.focus": {"rounds": 2, "add_per_bin": 3},
                                           "analyze.metric": "em", "analyze.threshold": 0.2, "analyze.target_width": 0.3})
    cfg = load_kv_config(exp)
    prepare(cfg, progress=False)
    KVRunner(cfg, engine=BudgetEngine()).run(progress=False)
    st = KVStore(cfg.db_path)
    extra = st.query("SELECT run_id, round, COUNT(*) AS n FROM requests WHERE round > 0 GROUP BY 1, 2")
    assert extra, "no focus round added requests"
    assert {r["run_id"] for r in extra} <= {"knorm-ratio0.5", "knorm-ratio0.25", "knorm-ratio0.1"}
    first = st.query("SELECT COUNT(*) AS n FROM requests WHERE round = 0 AND run_id = 'knorm-ratio0.25'")[0]["n"]
    assert first == 6 and all(r["n"] <= 3 * 2 for r in extra)          # add_per_bin per (run, bin) per round
    added = st.query("SELECT e.meta FROM requests q JOIN examples e USING (example_id) WHERE q.round > 0")
    import json
    assert all(json.loads(m["meta"])["pool_rank"] >= 3 for m in added)   # drawn from the reserve, never the first sample
    assert st.query("SELECT COUNT(*) AS n FROM requests WHERE status != 'completed'")[0]["n"] == 0
    n = st.query("SELECT COUNT(*) AS n FROM requests")[0]["n"]
    KVRunner(cfg, engine=BudgetEngine()).run(progress=False)                 # a rerun of a finished run adds nothing
    assert st.query("SELECT COUNT(*) AS n FROM requests")[0]["n"] == n
    last = st.query("SELECT MAX(round) AS r FROM requests")[0]["r"]
    with st.tx() as c: c.execute("UPDATE requests SET status='pending' WHERE round = ?", (last,))   # died inside the last round
    KVRunner(cfg, engine=BudgetEngine()).run(progress=False)
    assert st.query("SELECT COUNT(*) AS n FROM requests")[0]["n"] == n
    assert st.query("SELECT COUNT(*) AS n FROM requests WHERE status != 'completed'")[0]["n"] == 0
