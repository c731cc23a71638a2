"""Two `labnb kv run` processes on one group share the work and never run the same request; a SIGKILL of one at any
moment loses no completed request, and only its request in flight is run again (by whoever takes it over)."""
import os, signal, subprocess, sys, textwrap, time
from collections import Counter
from pathlib import Path

import yaml

from labnb.kv.config import load_kv_config
from labnb.kv.prepare import prepare
from labnb.kv.store import KVStore

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    import hashlib, os, sys, time
    from pathlib import Path
    from labnb.kv.config import load_kv_config
    from labnb.kv.engines import GenResult
    from labnb.kv.run import KVRunner

    class SlowEngine:
        "Answers with this process's pid after a short wait; logs every execution before answering."
        name = "slow-stub"
        def generate(self, req, on_failure=None, on_text=None):
            time.sleep(float(os.environ["STUB_SLEEP"]))
            key = hashlib.md5((req.context + req.question).encode()).hexdigest()
            with open(os.environ["STUB_LOG"], "a") as f: f.write(f"{os.getpid()} {req.press} {req.budget} {key}\\n")
            return GenResult(text=str(os.getpid()), finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_s=0.0)

    exp, tag = sys.argv[1], sys.argv[2]
    Path(f"{exp}.{tag}.ready").touch()
    while not Path(f"{exp}.go").exists(): time.sleep(0.01)        # start together
    KVRunner(load_kv_config(exp), engine=SlowEngine()).run(progress=False)
''')


def setup_group(tmp_path, n=16):
    cfg = {"group": "conc", "out_dir": str(tmp_path / "conc"), "engine": {"model": "tiny-llama", "max_new_tokens": 2},
           "prepare": {"tasks": [{"name": "synthetic_kv", "n_examples": n, "params": {"n_keys": [4, 8]}}], "n_bins": 2, "per_bin": n // 2},
           "run": {"presses": ["knorm"], "budgets": [1.0, 0.5]}}
    exp = tmp_path / "conc.yaml"; exp.write_text(yaml.safe_dump(cfg))
    prepare(load_kv_config(exp), progress=False)
    (tmp_path / "worker.py").write_text(WORKER)
    return exp, 2 * n                                             # none-ratio1 and knorm-ratio0.5


def start(tmp_path, exp, tags, sleep):
    env = {**os.environ, "STUB_LOG": str(tmp_path / "exec.log"), "STUB_SLEEP": str(sleep), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(exp), t], cwd=ROOT, env=env) for t in tags]
    deadline = time.time() + 120
    while not all(Path(f"{exp}.{t}.ready").exists() for t in tags):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "workers did not start"
        time.sleep(0.02)
    Path(f"{exp}.go").touch()
    return procs


def executions(tmp_path) -> Counter:
    lines = (tmp_path / "exec.log").read_text().split("\n")
    return Counter(tuple(l.split(" ", 3)[1:]) for l in lines if l)


def test_two_processes_never_run_the_same_request(tmp_path):
    exp, total = setup_group(tmp_path)
    procs = start(tmp_path, exp, ["a", "b"], sleep=0.04)
    for p in procs: assert p.wait(timeout=300) == 0
    ex = executions(tmp_path)
    assert sum(ex.values()) == total and set(ex.values()) == {1}, ex.most_common(3)   # every request ran exactly once
    st = KVStore(tmp_path / "conc" / "kv.sqlite")
    by = Counter(r["text"] for r in st.query("SELECT text FROM responses"))
    assert sum(by.values()) == total and len(by) == 2, by                              # both processes did part of the work
    assert st.query("SELECT COUNT(*) AS n FROM requests WHERE status != 'completed' OR attempts != 1")[0]["n"] == 0


def test_sigkill_of_one_process_loses_nothing_and_reruns_only_the_request_in_flight(tmp_path):
    exp, total = setup_group(tmp_path)
    db = tmp_path / "conc" / "kv.sqlite"
    procs = start(tmp_path, exp, ["a", "b"], sleep=0.08)
    st, deadline = KVStore(db), time.time() + 120
    victim = procs[0]
    while time.time() < deadline:                                  # kill a once both are working and some work is done
        done = st.query("SELECT text, COUNT(*) AS n FROM responses GROUP BY text")
        if sum(r["n"] for r in done) >= 6 and len(done) == 2: break
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL); victim.wait()
    before = {(r["run_id"], r["example_id"]): r["text"] for r in st.query("SELECT * FROM responses")}
    assert procs[1].wait(timeout=300) == 0
    from labnb.kv.cli import main
    assert main(["run", str(exp), "-q"]) == 0                       # finishes a request the survivor could not take yet
    after = {(r["run_id"], r["example_id"]): r["text"] for r in st.query("SELECT * FROM responses")}
    assert all(after[k] == v for k, v in before.items())           # no completed request was lost or redone
    assert st.query("SELECT COUNT(*) AS n FROM requests WHERE status != 'completed'")[0]["n"] == 0
    ex = executions(tmp_path)
    twice = [k for k, n in ex.items() if n > 1]
    assert len(twice) <= 1 and max(ex.values()) <= 2, twice       # only the victim's request in flight ran again
    assert st.query("SELECT COUNT(*) AS n FROM requests WHERE attempts > 1")[0]["n"] <= 1


def test_a_request_that_runs_longer_than_its_lease_keeps_it_and_a_finished_store_is_forgotten(tmp_path, monkeypatch):
    "The process heartbeat (one per process, `labnb.store`) renews a running request's lease, so that another machine never takes it over; once nothing of this process runs in a store, the heartbeat forgets it."
    import labnb.kv.store as kvs, labnb.store as store
    monkeypatch.setattr(kvs, "LEASE_S", 0.4)
    st = KVStore(tmp_path / "kv.sqlite")
    st.add_examples([dict(example_id=f"e{i}", task="t", question="q", context="c", answers=["a"]) for i in range(2)])
    st.ensure_run("r", press="knorm", budget_kind="ratio", budget=0.5, model="m", tokenizer="t", prompt_template_hash="p", dataset_hash="d")
    st.add_requests("r", [("e0", "P"), ("e1", "P")])
    (ex, _), = st.claim("r", 1)
    unit, t0 = kvs.request_unit("r", ex), time.time()
    time.sleep(1.5)                                                      # almost 4 leases
    beat = st.status.get(unit).heartbeat
    assert beat > t0 + 1.0, beat - t0
    assert store.owner_alive("elsewhere:1:1", beat, time.time(), 0.4)   # the rule for an owner on another machine: fresh
    assert st.claim("r", 5, owner="elsewhere:1:1") == [("e1", 1)]        # the running request is not taken over
    assert st.complete("r", ex, dict(text="a"), owner=kvs.process_owner())
    key = (str((tmp_path / "kv.sqlite").absolute()), kvs.REQUEST_TABLE)
    deadline = time.time() + 5
    while key in store._HEARTBEAT["tables"] and time.time() < deadline: time.sleep(0.05)
    assert key not in store._HEARTBEAT["tables"]
