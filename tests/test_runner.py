"End-to-end tests of the runner, sweeps (kill and resume, Dask) and CLI validation (promotion and the docs site: tests/test_docs.py)."
import os, shutil, signal, sqlite3, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from labnb.cli import SKIP_EXEC, main
from labnb.core import paths
from labnb.runner import scratch_home
from labnb.store import StatusTable

REPO = paths().home
SWEEP = REPO / "configs" / "sweeps" / "smoke.yaml"
_BIN = Path(sys.executable).parent / "labnb"
LABNB = [str(_BIN)] if _BIN.exists() else [sys.executable, "-c", "import sys; from labnb.cli import main; sys.exit(main())"]


def _units(status_file: Path) -> dict:
    return {u.unit: u for u in StatusTable(status_file).rows()}


def _wait_completed(status_file: Path, n: int, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if status_file.exists():
            try:
                if StatusTable(status_file).counts()["completed"] >= n: return
            except sqlite3.OperationalError: pass
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {n} runs completed in {timeout} s")


@pytest.fixture(scope="module")
def killed_and_resumed():
    "The smoke sweep (6 runs) killed with SIGKILL after two runs, then resumed: (home, before, after, index text)."
    with scratch_home() as h:
        sweep = h / "smoke.yaml"; shutil.copy(SWEEP, sweep)
        status = h / "results" / "sweeps" / "smoke" / "status.sqlite"
        p = subprocess.Popen([*LABNB, "sweep", str(sweep), "--max-parallel", "1"], cwd=h, env=os.environ.copy(),
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try: _wait_completed(status, 2)
        finally: os.killpg(p.pid, signal.SIGKILL); p.wait()
        before = _units(status)
        mtimes = {u: (h / "results" / u / "smoke.ipynb").stat().st_mtime_ns for u, r in before.items() if r.status == "completed"}
        r = subprocess.run([*LABNB, "sweep", str(sweep), "--max-parallel", "2"], cwd=h, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        yield h, before, mtimes, _units(status), (h / "results" / "smoke" / "index.csv").read_text()


def test_resume_after_sigkill_reruns_nothing_completed(killed_and_resumed, capsys):
    h, before, mtimes, after, index = killed_and_resumed
    done = {u: r for u, r in before.items() if r.status == "completed"}
    assert 2 <= len(done) < 6, before
    assert len(after) == 6 and all(x.status == "completed" for x in after.values())
    for u, old in done.items():          # finished before the kill: never executed again
        assert (after[u].attempts, after[u].finished) == (1, old.finished), u
        assert (h / "results" / u / "smoke.ipynb").stat().st_mtime_ns == mtimes[u]
    for u, old in before.items():        # killed mid-run: ran once more
        if old.status == "running": assert after[u].attempts == 2, u
    assert len(index.splitlines()) == 7
    assert main(["status", "smoke"]) == 0 and "6 completed" in capsys.readouterr().out


def test_uninterrupted_dask_sweep_gives_the_same_index(killed_and_resumed):
    resumed_index = killed_and_resumed[-1]
    with scratch_home() as h:           # the same sweep, uninterrupted, through Dask on a LocalCluster
        sweep = h / "smoke.yaml"; shutil.copy(SWEEP, sweep)
        r = subprocess.run([*LABNB, "sweep", str(sweep), "--executor", "dask", "--max-parallel", "2"], cwd=h,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert (h / "results" / "smoke" / "index.csv").read_text() == resumed_index


def _cli(*argv, capsys):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_bad_parameters_exit_2_before_anything_runs(capsys):
    with scratch_home() as h:
        code, out = _cli("run", "smoke", "-p", "degre", "3", capsys=capsys)
        assert code == 2 and "degre: unknown parameter" in out.err
        code, out = _cli("run", "smoke", "-p", "noise", "loud", capsys=capsys)
        assert code == 2 and "noise: expected float" in out.err
        bad = h / "bad.yaml"
        bad.write_text("name: bad\ntemplate: smoke\ngrid: {degree: [1, two]}\n")
        code, out = _cli("sweep", str(bad), capsys=capsys)
        assert code == 2 and "degree: expected int" in out.err and "runs[0]" in out.err
        assert not (h / "results" / "sweeps" / "bad").exists()          # validation happens before any run
        code, out = _cli("sweep", str(h / "missing.yaml"), capsys=capsys)
        assert code == 2 and "missing.yaml" in out.err
        code, out = _cli("sweep", str(SWEEP), "--executor", "ray", capsys=capsys)
        assert code == 2 and "unknown executor 'ray'" in out.err
        code, out = _cli("status", "nope", capsys=capsys)
        assert code == 2 and "no sweep 'nope'" in out.err
        assert not (h / "results" / "smoke").exists()
