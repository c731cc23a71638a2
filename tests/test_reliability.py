"Runs and sweeps as a user hits them: kills at the wrong moment, two processes on one sweep, bad sweep files, corrupt stores."
import json, os, signal, sqlite3, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from labnb.cli import main
from labnb.runner import scratch_home
from labnb.store import StatusTable

_BIN = Path(sys.executable).parent / "labnb"
LABNB = [str(_BIN)] if _BIN.exists() else [sys.executable, "-c", "import sys; from labnb.cli import main; sys.exit(main())"]


def template(body: str, params: str = "pause: float = 0.0  # seconds to sleep\nk: int = 0  # an index", after: str = "") -> str:
    "A tiny template: it logs each execution (pid and run folder) to `executions.log` in the home, then runs `body`."
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params + '\nrun_dir: str = ""  # set by the runner'); p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("import os, time\nfrom labnb.store import open_run"), p,
                nbformat.v4.new_code_cell("run = open_run('t', run_dir, {'pause': pause, 'k': k})\n"
                                          "with open('executions.log', 'a') as f: f.write(f'{os.getpid()} {run_dir}\\n')\n"
                                          "time.sleep(pause)\n" + body + "\nrun.finish({'k': k})\n" + after)]
    nb.metadata["kernelspec"] = {"name": "labnb", "display_name": "labnb", "language": "python"}
    return nbformat.writes(nb)


def executions(h: Path) -> list[str]:
    f = h / "executions.log"
    return [l.split(" ", 1)[1] for l in f.read_text().splitlines()] if f.exists() else []


def descendants(pid: int) -> set[int]:
    "Every process below `pid` (children, grandchildren, ...)."
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try: ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError): continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []): out.add(k); todo.append(k)
    return out


def alive(pid: int) -> bool:
    try: state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError: return False
    return state != "Z"


def wait_for(cond, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond(): return
        time.sleep(0.2)
    raise TimeoutError(what)


def cli(*argv) -> tuple[int, str]:
    from contextlib import redirect_stderr, redirect_stdout
    import io
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err): code = main(list(argv))
    return code, err.getvalue()


def test_two_sweeps_on_one_sweep_run_each_unit_once():
    with scratch_home((), extra={"t": template("")}) as h:
        sweep = h / "s.yaml"; sweep.write_text("name: twice\ntemplate: t\ngrid: {k: [0, 1, 2, 3, 4, 5]}\nparams: {pause: 0.5}\n")
        ps = [subprocess.Popen([*LABNB, "sweep", str(sweep)], cwd=h, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in ps]
        assert [p.returncode for p in ps] == [0, 0], outs
        runs = executions(h)
        assert len(runs) == 6 and len(set(runs)) == 6, runs                      # every unit exactly once
        rows = StatusTable(h / "results" / "sweeps" / "twice" / "status.sqlite").rows()
        assert [r.status for r in rows] == ["completed"] * 6 and {r.attempts for r in rows} == {1}
        assert len((h / "results" / "t" / "index.csv").read_text().splitlines()) == 7           # a row per run, none lost


def test_kill9_of_the_sweep_alone_kills_its_workers_and_kernels_and_resume_finishes():
    with scratch_home((), extra={"t": template("")}) as h:
        sweep = h / "s.yaml"; sweep.write_text("name: orphans\ntemplate: t\ngrid: {k: [0, 1, 2, 3]}\nparams: {pause: 20}\nmax_parallel: 2\n")
        p = subprocess.Popen([*LABNB, "sweep", str(sweep)], cwd=h, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(executions(h)) >= 2, 120, "two units did not start")
        below = descendants(p.pid)
        assert len(below) >= 4, below                                          # two workers, each with its kernel
        os.kill(p.pid, signal.SIGKILL); p.wait()
        wait_for(lambda: not any(alive(q) for q in below), 15, f"left running: {[q for q in below if alive(q)]}")
        started = executions(h)
        r = subprocess.run([*LABNB, "sweep", str(sweep), "--max-parallel", "4"], cwd=h, capture_output=True, text=True, timeout=300,
                           env={**os.environ})
        assert r.returncode == 0, r.stderr
        rows = {u.unit: u for u in StatusTable(h / "results" / "sweeps" / "orphans" / "status.sqlite").rows()}
        assert all(u.status == "completed" for u in rows.values())
        killed = {u for u in started}
        assert sorted(u.attempts for u in rows.values()) == [1, 1, 2, 2] and len(killed) == 2


def test_a_run_killed_after_its_metrics_is_redone_not_skipped():
    with scratch_home((), extra={"t": template("", after="time.sleep(pause)")}) as h:   # a late cell: the kill lands after metrics.json
        p = subprocess.Popen([*LABNB, "run", "t", "-q", "-p", "k", "7", "-p", "pause", "3"], cwd=h,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: len(executions(h)) == 1, 120, "the run did not start")
        run_dir = h / executions(h)[0]
        wait_for(lambda: (run_dir / "metrics.json").exists(), 60, "no metrics")
        os.killpg(p.pid, signal.SIGKILL); p.wait()                             # killed while the runner finalizes
        assert not (run_dir / "completed.json").exists()
        code, err = cli("run", "t", "-q", "-p", "k", "7", "-p", "pause", "3")
        assert code == 0, err
        assert len(executions(h)) == 2 and (run_dir / "completed.json").exists()
        params = (run_dir / "params.yaml").read_text()
        assert "runner:" in params and str(h) not in (run_dir / "t.ipynb").read_text()
        code, _ = cli("run", "t", "-q", "-p", "k", "7", "-p", "pause", "3"); assert code == 0 and len(executions(h)) == 2


@pytest.mark.parametrize("text,argv,msg", [
    ("runs: []\n", (), "runs: is empty"),
    ("template: t\nparams: [1, 2]\n", (), "params: must be a mapping"),
    ("template: t\n", ("--max-parallel", "0"), "max_parallel: must be a positive integer"),
    ("template: t\ngrid: {k: []}\n", (), "grid.k: must be a non-empty list"),
    ("template: t\n  bad: [\n", (), "s.yaml"),
])
def test_bad_sweep_files_exit_2_with_one_line(text, argv, msg):
    with scratch_home((), extra={"t": template("")}) as h:
        f = h / "s.yaml"; f.write_text(text)
        code, err = cli("sweep", str(f), *argv)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert not (h / "results" / "t").exists()


def test_corrupt_status_file_is_named_in_one_line():
    with scratch_home((), extra={"t": template("")}) as h:
        f = h / "s.yaml"; f.write_text("name: c\ntemplate: t\n")
        st = h / "results" / "sweeps" / "c" / "status.sqlite"; st.parent.mkdir(parents=True)
        st.write_bytes(b"garbage" * 1000)
        for argv in (("sweep", str(f)), ("status", "c")):
            code, err = cli(*argv)
            assert code == 2 and "status.sqlite: is not a usable SQLite database" in err and "move it aside" in err, err
            assert len(err.strip().splitlines()) == 1


def test_a_data_error_in_a_template_is_the_first_line():
    body = "from labnb.data import DataError\nraise DataError('expected a number, got \"abc\"', file='data/x.csv', line=3, field='score')"
    with scratch_home((), extra={"t": template(body)}) as h:
        code, err = cli("run", "t", "-q")
        assert code == 2 and err.splitlines()[0] == "labnb run: error: data/x.csv, line 3, field 'score': expected a number, got \"abc\"", err


def test_concurrent_index_writers_lose_no_row(tmp_path):
    code = ("import os, sys; os.environ['LABNB_HOME'] = sys.argv[1]\n"
            "from labnb.runner import upsert_index\n"
            "for i in range(40): upsert_index('e', {'run_id': f'{sys.argv[2]}-{i}', 'metric.x': i})")
    (tmp_path / "settings.ini").write_text("[DEFAULT]\nlib_name = labnb\n")
    ps = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), n]) for n in "ab"]
    assert [p.wait() for p in ps] == [0, 0]
    lines = (tmp_path / "results" / "e" / "index.csv").read_text().splitlines()
    assert len(lines) == 81 and lines[0] == "run_id,metric.x"


def test_a_sweep_waits_for_a_run_another_command_is_executing():
    with scratch_home((), extra={"t": template("")}) as h:
        (h / "s.yaml").write_text("name: shared\ntemplate: t\nparams: {pause: 4}\ngrid: {k: [1, 2]}\n")
        p = subprocess.Popen([*LABNB, "run", "t", "-q", "-p", "k", "1", "-p", "pause", "4"], cwd=h, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(executions(h)) == 1, 120, "the run did not start")
        r = subprocess.run([*LABNB, "sweep", "s.yaml"], cwd=h, capture_output=True, text=True, timeout=300)
        assert p.wait(120) == 0 and r.returncode == 0, r.stderr
        rows = StatusTable(h / "results" / "sweeps" / "shared" / "status.sqlite").rows()
        assert [u.status for u in rows] == ["completed", "completed"] and len(executions(h)) == 2     # k=1 ran once


def test_a_worker_killed_fails_only_its_own_unit():
    body = "if k == 1: os.kill(os.getppid(), 9)   # the out-of-memory killer takes this worker"
    with scratch_home((), extra={"t": template(body)}) as h:
        (h / "s.yaml").write_text("name: oom\ntemplate: t\nmax_parallel: 2\nlist: [{k: 1, pause: 1}, {k: 2, pause: 6}, {k: 3, pause: 1}]\n")
        r = subprocess.run([*LABNB, "sweep", "s.yaml"], cwd=h, capture_output=True, text=True, timeout=600)
        rows = {u.unit.split("k=")[1][0]: u.status for u in StatusTable(h / "results" / "sweeps" / "oom" / "status.sqlite").rows()}
        assert r.returncode == 1 and rows == {"1": "failed", "2": "completed", "3": "completed"}, (rows, r.stderr)


@pytest.mark.parametrize("text,msg", [
    (b"template: t\n\xff\xfe: 1\n", "not UTF-8"),
    (b"template: {a: 1}\n", "template: must be a template name"),
    (b"name: ../../escape\ntemplate: t\n", "name: must be a plain name"),
])
def test_more_bad_sweep_files(text, msg):
    with scratch_home((), extra={"t": template("")}) as h:
        f = h / "s.yaml"; f.write_bytes(text)
        code, err = cli("sweep", str(f))
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert not (h / "escape").exists()


def test_env_errors_and_float_literals_before_any_kernel(monkeypatch):
    with scratch_home((), extra={"t": template("", params="lr: float = 0.1  # a rate\nk: int = 0  # an index\npause: float = 0.0  # s")}) as h:
        monkeypatch.setenv("LABNB_THREADS", "abc")
        code, err = cli("run", "t", "-q")
        assert code == 2 and "LABNB_THREADS: must be a positive integer" in err and not (h / "results" / "t").exists(), err
        monkeypatch.setenv("LABNB_THREADS", "1")
        code, err = cli("run", "t", "-q", "-s", "lr=1e-3")          # YAML 1.1 reads 1e-3 as text; it is a float here
        assert code == 0, err


def test_damaged_complete_runs_are_redone_and_a_foreign_index_is_rebuilt():
    with scratch_home((), extra={"t": template("")}) as h:
        assert cli("run", "t", "-q", "-p", "k", "1")[0] == 0
        run_dir = h / executions(h)[0]
        (run_dir / "metrics.json").write_text('{"k": ')                        # cut short after completion
        (h / "results" / "t" / "index.csv").write_text("a,b\n1,2\n")            # another tool's file
        code, err = cli("run", "t", "-q", "-p", "k", "1")
        assert code == 0 and len(executions(h)) == 2, err
        assert json.loads((run_dir / "metrics.json").read_text()) == {"k": 1}
        assert (h / "results" / "t" / "index.csv").read_text().startswith("run_id,")
        (run_dir / "completed.json").unlink()
        code, err = cli("promote", str(run_dir), "x")
        assert code == 2 and "not a complete run" in err


def test_cache_entry_computed_once_by_two_processes(tmp_path):
    code = ("import sys, time, numpy as np\nfrom labnb.store import ArrayCache\n"
            "def compute():\n    open(sys.argv[1] + '/calls', 'a').write('x'); time.sleep(1); return {'a': np.arange(3)}\n"
            "print(ArrayCache(sys.argv[1]).get_or_compute('e', {'model_id': 'm'}, compute)['a'].tolist())")
    ps = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.communicate(timeout=120)[0].strip() for p in ps] == ["[0, 1, 2]"] * 2
    assert (tmp_path / "calls").read_text() == "x"


def test_interrupt_is_one_line_and_gives_units_back():
    with scratch_home((), extra={"t": template("")}) as h:
        (h / "s.yaml").write_text("name: intr\ntemplate: t\nparams: {pause: 30}\ngrid: {k: [1]}\n")
        p = subprocess.Popen([*LABNB, "sweep", "s.yaml"], cwd=h, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_for(lambda: len(executions(h)) == 1, 120, "the unit did not start")
        os.killpg(p.pid, signal.SIGINT); _, err = p.communicate(timeout=60)
        assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        assert [u.status for u in StatusTable(h / "results" / "sweeps" / "intr" / "status.sqlite").rows()] == ["pending"]


def test_figures_stay_in_the_run_notebook_whatever_mplbackend_says(monkeypatch):
    "A headless shell often exports MPLBACKEND=Agg; the kernel must still draw inline, and the client leaves no open channels."
    body = "import matplotlib.pyplot as plt\nplt.plot([0, 1]); plt.show()"
    with scratch_home((), extra={"t": template(body)}) as h:
        monkeypatch.setenv("MPLBACKEND", "Agg")
        code, err = cli("run", "t", "-q")
        assert code == 0, err
        nb = next((h / "results" / "t").glob("*/t.ipynb")).read_text()
        assert "image/png" in nb and "Could not destroy zmq context" not in err
        assert os.environ["MPLBACKEND"] == "Agg"                      # the caller's environment is given back


def _open_together(kind, path, barrier):
    barrier.wait()
    if kind == "status": StatusTable(path)
    else:
        from labnb.kv.store import KVStore
        KVStore(path)


@pytest.mark.parametrize("kind", ["status", "kv"])
def test_processes_creating_one_store_at_once_all_open_it(tmp_path, kind):
    "Two processes that create one SQLite file at the same instant deadlock on the switch to WAL; neither may fail (it did 76 times in 400)."
    import multiprocessing as mp
    ctx, failed = mp.get_context("fork"), 0
    for i in range(30):
        barrier = ctx.Barrier(2)
        ps = [ctx.Process(target=_open_together, args=(kind, tmp_path / f"{i}.sqlite", barrier)) for _ in range(2)]
        for p in ps: p.start()
        for p in ps: p.join(60)
        failed += sum(p.exitcode != 0 for p in ps)
    assert failed == 0
