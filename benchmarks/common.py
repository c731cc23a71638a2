"""Shared by the benchmarks: interleaved timing (ABAB...), load before and after, pinned threads, one JSON per benchmark."""
import json, os, platform, statistics, time
from pathlib import Path

from labnb.core import package_versions, paths
from labnb.store import atomic_write_json


def pin_threads(n: int = 1) -> int:
    "Pin torch (and BLAS) to `n` threads for the whole benchmark, whatever the machine's load."
    os.environ["LABNB_THREADS"] = str(n)
    from labnb.core import set_threads
    return set_threads(n)["n"]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleave(fns: dict, reps: int, warmup: int = 1) -> dict:
    "Time each callable `reps` times, alternating between them (A B A B ...); medians with min and max, in seconds."
    for _ in range(warmup):
        for f in fns.values(): f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "reps": reps} for k, v in times.items()}


def write(name: str, res: dict) -> Path:
    "Write `benchmarks/results/{name}.json` with the machine it ran on."
    out = paths().home / "benchmarks" / "results" / f"{name}.json"
    res = {**res, "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
           "versions": package_versions()}
    atomic_write_json(out, res)
    print(json.dumps(res, indent=2))
    return out
