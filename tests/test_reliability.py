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
        assert code == 1 and err.splitlines()[0] == "labnb run: error: data/x.csv, line 3, field 'score': expected a number, got \"abc\"", err


def test_concurrent_index_writers_lose_no_row(tmp_path):
    code = ("import os, sys; os.environ['LABNB_HOME'] = sys.argv[1]\n"
            "from labnb.runner import upsert_index\n"
            "for i in range(40): upsert_index('e', {'run_id': f'{sys.argv[2]}-{i}', 'metric.x': i})")
    (tmp_path / "settings.ini").write_text("[DEFAULT]\nlib_name = labnb\n")
    ps = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), n]) for n in "ab"]
    assert [p.wait() for p in ps] == [0, 0]
    lines = (tmp_path / "results" / "e" / "index.csv").read_text().splitlines()
    assert len(lines) == 81 and lines[0] == "run_id,metric.x"
