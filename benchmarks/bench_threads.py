"""The thread policy on a shared machine: 1 vs 2 torch threads vs labnb's automatic choice, with and without a CPU hog.

Three workloads on the offline models: embeddings (all-MiniLM-L6-v2 forward on 32 sentences), FV (SmolLM2-135M
forward on 8 prompts of 96 tokens, what head patching repeats) and KV (SmolLM2-135M prefill of one 1,024-token
context). For each condition (quiet; one busy-loop process beside), the three policies are timed interleaved
(1, 2, auto, 1, 2, auto, ...); `auto` calls `labnb.core.set_threads()` right before each timing, as a run does
when it starts. Writes benchmarks/results/threads.json; the claim to check: under the hog, auto is never slower than
one thread (within noise), and on a quiet machine it takes the second core.
"""
import os, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import load, write

import torch

from labnb.core import set_threads
from labnb.models import load_model

REPS = int(os.environ.get("BENCH_REPS", 5))


def workloads() -> dict:
    enc, etok = load_model("minilm")
    lm, ltok = load_model("smollm2-135m")
    sents = [f"sentence number {i} says something about the weather in a city" for i in range(32)]
    e_in = etok(sents, return_tensors="pt", padding=True)
    fv_ids = torch.randint(100, 20000, (8, 96), generator=torch.Generator().manual_seed(0))
    kv_ids = torch.randint(100, 20000, (1, 1024), generator=torch.Generator().manual_seed(1))
    @torch.no_grad()
    def embeddings(): enc(**e_in)
    @torch.no_grad()
    def fv(): lm(fv_ids)
    @torch.no_grad()
    def kv(): lm(kv_ids, use_cache=True)
    return {"embeddings": embeddings, "fv": fv, "kv": kv}


def timed_policies(work, reps: int) -> tuple[dict, list]:
    "Interleaved (1, 2, auto, 1, 2, auto, ...); auto chooses with `set_threads()` before each timing, as a run does once at its start (the choice itself, a 0.25 s look at /proc/stat, is not timed)."
    import statistics
    times, chosen = {"1 thread": [], "2 threads": [], "auto": []}, []
    work()                                                           # warm-up
    for _ in range(reps):
        for k in times:
            if k == "auto": os.environ.pop("LABNB_THREADS", None); chosen.append(set_threads()["n"])
            else: torch.set_num_threads(1 if k == "1 thread" else 2)
            t = time.perf_counter(); work(); times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "reps": reps} for k, v in times.items()}, chosen


def condition(name: str, works: dict) -> dict:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if name == "hog" else None
    try:
        if hog: time.sleep(1.0)
        out = {"loadavg_start": load()}
        for w, fn in works.items():
            t, chosen = timed_policies(fn, REPS)
            one = t["1 thread"]["median_s"]
            out[w] = {**{k: {kk: round(vv, 4) if isinstance(vv, float) else vv for kk, vv in v.items()} for k, v in t.items()},
                      "auto_threads_chosen": sorted(set(chosen)), "auto_over_1_thread": round(t["auto"]["median_s"] / one, 3),
                      "2_threads_over_1_thread": round(t["2 threads"]["median_s"] / one, 3)}
            print(name, w, out[w]["auto_over_1_thread"], out[w]["2_threads_over_1_thread"], out[w]["auto_threads_chosen"], flush=True)
        out["loadavg_end"] = load()
        return out
    finally:
        if hog: hog.kill(); hog.wait()


def main() -> dict:
    works = workloads()
    return write("threads", {"what": "median seconds per call: 1 thread vs 2 threads vs labnb's automatic policy, interleaved; "
                                     "quiet machine and one busy-loop process beside",
                             "quiet": condition("quiet", works), "hog": condition("hog", works)})


if __name__ == "__main__":
    main()
