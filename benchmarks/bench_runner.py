"""Runner overhead per run against a bare papermill call on the same notebook, interleaved in one process.

Each repetition runs the smoke template once through `labnb.runner.run_template` (validation, run id, lock,
params.yaml with provenance, IPC kernel, log, path relativization, completion marker, index row) and once through
`papermill.execute_notebook` with the same kernel and parameters, alternating (A B A B ...) so machine load affects
both alike. Every labnb run is a new run id, as in a sweep. Also: the index update at 4,096 past runs (one row
appended, not a rescan), and the start-up of the `labnb` command. Writes benchmarks/results/runner.json.
"""
import itertools, os, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleave, load, pin_threads, write

import papermill as pm

from labnb.runner import index_row, run_template, scratch_home, upsert_index, write_index

REPS = int(os.environ.get("BENCH_REPS", 6))


def main() -> dict:
    pin_threads(1)
    load0 = load()
    with scratch_home() as h, tempfile.TemporaryDirectory() as tmp:
        tmpl, seeds = h / "nbs" / "experiments" / "smoke.ipynb", itertools.count(1000)
        def bare():
            i = next(seeds)
            pm.execute_notebook(str(tmpl), f"{tmp}/bare{i}.ipynb", parameters={"seed": i, "run_dir": f"{tmp}/bare{i}"},
                                kernel_name="labnb", cwd=str(h), progress_bar=False)
        def labnb():
            assert run_template("smoke", {"seed": next(seeds)}).status == "completed"
        t = interleave({"bare_papermill": bare, "labnb_run": labnb}, REPS)
        rows = {f"r{i:05d}": index_row("big", f"r{i:05d}", {"seed": i, "lr": 0.1}, {"mse": 0.5, "acc": 0.9}) for i in range(4096)}
        write_index("big", rows)
        n, t0 = 50, time.perf_counter()
        for i in range(n): upsert_index("big", index_row("big", f"new{i}", {"seed": i, "lr": 0.1}, {"mse": 0.5, "acc": 0.9}))
        upsert_ms = (time.perf_counter() - t0) / n * 1000
    cli = interleave({"labnb_status": lambda: subprocess.run([str(Path(sys.executable).parent / "labnb"), "status"], capture_output=True),
                      "python_only": lambda: subprocess.run([sys.executable, "-c", "pass"], capture_output=True)}, 5)
    b, r = t["bare_papermill"]["median_s"], t["labnb_run"]["median_s"]
    return write("runner", {
        "what": "smoke template, one new run each: labnb run_template vs bare papermill.execute_notebook (kernel labnb), interleaved",
        "timings": t, "bare_median_s": round(b, 3), "runner_median_s": round(r, 3), "overhead_per_run_s": round(r - b, 3),
        "ratio_runner_over_bare": round(r / b, 3), "index_upsert_ms_at_4096_runs": round(upsert_ms, 2),
        "labnb_status_command_s": round(cli["labnb_status"]["median_s"], 3),
        "python_startup_s": round(cli["python_only"]["median_s"], 3),
        "loadavg_start": load0, "loadavg_end": load()})


if __name__ == "__main__":
    main()
