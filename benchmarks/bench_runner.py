"""Runner overhead per run against a bare papermill call on the same notebook, measured in one process.

Each repetition runs the smoke template once through `labnb.runner.run_template` (validation, run id, params.yaml
with provenance, log, path relativization, metrics check) and once through `papermill.execute_notebook` with the same
kernel and parameters, alternating so machine load affects both alike. Writes benchmarks/results/runner.json.
"""
import json, os, platform, statistics, sys, tempfile, time
from pathlib import Path

import papermill as pm

from labnb.core import package_versions, paths
from labnb.runner import _relativize_notebook, make_run_id, run_template, scratch_home, validate_params
from labnb.store import RunFolder, atomic_write_json

REPS = int(os.environ.get("BENCH_REPS", 4))


def main() -> dict:
    out = paths().home / "benchmarks" / "results" / "runner.json"
    load0 = os.getloadavg()
    bare, runner = [], []
    with scratch_home() as h, tempfile.TemporaryDirectory() as tmp:
        tmpl = h / "nbs" / "experiments" / "smoke.ipynb"
        run_template("smoke", {"seed": 99}, force=True)            # warm caches (imports, kernel spec lookup)
        for i in range(REPS):
            t = time.perf_counter()
            pm.execute_notebook(str(tmpl), f"{tmp}/bare{i}.ipynb", parameters={"seed": i, "run_dir": f"{tmp}/bare{i}"},
                                kernel_name="labnb", cwd=str(h), progress_bar=False)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = run_template("smoke", {"seed": i}, force=True)
            runner.append(time.perf_counter() - t)
            assert r.status == "completed"
        t, n = time.perf_counter(), 200
        for i in range(n): make_run_id(validate_params("smoke", {"seed": i, "degree": "2"}, from_cli=True))
        pre_ms = (time.perf_counter() - t) / n * 1000
        t, n = time.perf_counter(), 20                                # params.yaml with provenance (git, versions)
        for i in range(n): RunFolder(Path(tmp) / f"rf{i}").start({"seed": i}, experiment="smoke")
        start_ms = (time.perf_counter() - t) / n * 1000
        t = time.perf_counter()                                       # path relativization of an executed notebook
        for i in range(n): _relativize_notebook(r.notebook)
        rel_ms = (time.perf_counter() - t) / n * 1000
    med_b, med_r = statistics.median(bare), statistics.median(runner)
    res = {"what": "smoke template, one run: labnb run_template vs bare papermill.execute_notebook (kernel labnb)",
           "reps": REPS, "bare_seconds": [round(x, 3) for x in bare], "runner_seconds": [round(x, 3) for x in runner],
           "bare_median_s": round(med_b, 3), "runner_median_s": round(med_r, 3),
           "overhead_per_run_s": round(med_r - med_b, 3), "ratio_runner_over_bare": round(med_r / med_b, 3),
           "validation_and_run_id_ms": round(pre_ms, 2), "params_yaml_with_provenance_ms": round(start_ms, 1),
           "relativize_notebook_ms": round(rel_ms, 1), "loadavg_start": [round(x, 2) for x in load0],
           "loadavg_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
           "python": platform.python_version(), "versions": package_versions(("labnb", "papermill", "nbclient", "ipykernel"))}
    atomic_write_json(out, res)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
