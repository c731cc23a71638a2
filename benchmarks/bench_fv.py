"""Heads patched per second: one forward pass per head (A) against the `suffix` method (B), interleaved A B A B ...

Same model, same prompt (a 10-shot function-vector prompt, corrupted labels), same mean head activations. A is timed
on a spread subset of heads (it is a rate), B on every head; each round times A then B (then the older `prefix`
method, for reference), so a change of machine load hits all methods alike. torch runs on one thread. Every method
needs the unpatched pass of the prompt once (p_corrupted); `suffix` reuses it (its cache and block inputs), so B is
timed given that pass and the pass itself is reported apart (`clean_run`, and the ratio counting it).
Times are wall clock and process CPU time (on a loaded machine the CPU time is the steadier measure). Reported:
per-method medians over rounds with min and max, the ratio of the median rates, the load average before and after,
and the largest |p(target)| difference between the methods on the heads A timed (must be <= 1e-6).
Writes benchmarks/results/fv.json.

    python benchmarks/bench_fv.py [--model smollm2-135m] [--rounds 5] [--n-seq 6]
"""
import argparse, json, os, statistics, time

import pandas as pd
import torch

from labnb.core import paths, provenance
from labnb.store import atomic_write_json
from labnb.runner import strip_home
from labnb.models import load_model, tiny_model, model_spec, model_meta
from labnb.fv.core import (PromptFormat, relation_rows, sample_trials, corrupted_prompt, clean_prompt, encode, answer_token,
                      score_prompts, patched_probs, all_heads, last_token_run)

def _stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="offline model name or tiny:<arch>")
    ap.add_argument("--task", default="fv/present-past")
    ap.add_argument("--n-demos", type=int, default=10)
    ap.add_argument("--n-seq", type=int, default=6, help="heads timed with one forward pass each, per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="heads per forward pass (suffix, prefix)")
    ap.add_argument("--no-prefix", action="store_true", help="do not time the older prefix method")
    ap.add_argument("--out", default=str(paths().home / "benchmarks" / "results" / "fv.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    kind, _, arch = a.model.partition(":")
    model, tok = tiny_model(arch) if kind == "tiny" else load_model(a.model)
    spec, fmt = model_spec(model), PromptFormat()
    rows = pd.DataFrame(relation_rows(a.task)).assign(q_id=a.task)
    trial = sample_trials(rows, 1, a.n_demos, seed=0)[0]
    ids, target = encode(tok, corrupted_prompt(trial, fmt)), answer_token(tok, trial["query"]["output"], fmt)
    mean = score_prompts(model, spec, [encode(tok, clean_prompt(trial, fmt))], [target], read_heads=True)["heads"][0]
    layers, heads = all_heads(spec)                                      # [L*H], layer-major
    n = len(layers)
    methods = ["sequential", "suffix"] + ([] if a.no_prefix else ["prefix"])
    def n_of(m): return a.n_seq if m == "sequential" else n

    ids_t = torch.as_tensor(ids)
    def run(method, sel):
        "p(target) of the heads `sel`, wall and CPU seconds."
        t0, c0 = time.perf_counter(), time.process_time()
        if method == "clean_run": p = last_token_run(model, spec, ids_t)
        else: p = patched_probs(model, spec, ids, target, mean, method, a.batch, layers[sel], heads[sel],
                                clean=clean if method == "suffix" else None)
        return p, time.perf_counter() - t0, time.process_time() - c0

    clean = last_token_run(model, spec, ids_t)                        # the unpatched pass (also a warm-up)
    for m in methods: run(m, torch.arange(2))                            # warm-up
    load_before = os.getloadavg()
    wall, cpu = {m: [] for m in [*methods, "clean_run"]}, {m: [] for m in [*methods, "clean_run"]}
    p_all, err = {}, {"suffix_vs_sequential": 0.0, "prefix_vs_sequential": 0.0}
    for r in range(a.rounds):
        sub = (torch.linspace(0, n - 1, a.n_seq).round().long() + r) % n   # other heads each round, spread over layers
        for m in [*methods, "clean_run"]:
            sel = sub if m == "sequential" else torch.arange(n)
            p, tw, tc = run(m, sel)
            wall[m].append(tw); cpu[m].append(tc)
            if m != "clean_run": p_all[m] = (sel, p)
        ref = p_all["sequential"][1]
        for m in methods:
            if m != "sequential": err[f"{m}_vs_sequential"] = max(err[f"{m}_vs_sequential"], float((p_all[m][1][sub] - ref).abs().max()))
        print(f"round {r}: " + ", ".join(f"{m} {n_of(m) / cpu[m][-1]:.2f} heads/s cpu ({n_of(m) / wall[m][-1]:.2f} wall)"
                                         for m in methods), flush=True)
    load_after = os.getloadavg()
    def rates(ts, m, extra=None): return [n_of(m) / (t + (extra[i] if extra else 0)) for i, t in enumerate(ts[m])]
    out = {}
    for clock, ts in (("cpu", cpu), ("wall", wall)):
        rate = {m: rates(ts, m) for m in methods}
        rate["suffix_incl_clean_run"] = rates(ts, "suffix", ts["clean_run"])
        med = {m: statistics.median(v) for m, v in rate.items()}
        out[clock] = {"heads_per_second": {m: _stats(v) for m, v in rate.items()},
                      "clean_run_seconds": _stats(ts["clean_run"]),
                      "ratio_suffix_vs_sequential": med["suffix"] / med["sequential"],
                      "ratio_suffix_incl_clean_run_vs_sequential": med["suffix_incl_clean_run"] / med["sequential"],
                      "ratio_suffix_vs_sequential_per_round": [x / y for x, y in zip(rate["suffix"], rate["sequential"])],
                      **({"ratio_prefix_vs_sequential": med["prefix"] / med["sequential"]} if "prefix" in med else {})}
    res = {"model": model_meta(model), "task": a.task, "n_demos": a.n_demos, "prompt_tokens": len(ids),
           "n_layers": spec.n_layers, "n_heads": spec.n_heads, "n_kv_heads": spec.n_kv_heads, "heads_total": n,
           "torch_threads": torch.get_num_threads(), "rounds": a.rounds, "order": "interleaved " + " ".join([*methods, "clean_run"]),
           "heads_timed_per_round": {m: n_of(m) for m in methods}, "batch": a.batch,
           "load_average_before": list(load_before), "load_average_after": list(load_after),
           "ratio_suffix_vs_sequential": out["cpu"]["ratio_suffix_vs_sequential"], "cpu": out["cpu"], "wall": out["wall"],
           "max_abs_diff_p": {k: v for k, v in err.items() if k.split("_")[0] in methods},
           "p_range": [float(p_all["suffix"][1].min()), float(p_all["suffix"][1].max())],
           "provenance": provenance({"trials": 0})}
    res = strip_home(res)                                              # no machine paths in the committed figures
    atomic_write_json(a.out, res)
    print(json.dumps({"load_average_before": res["load_average_before"], "load_average_after": res["load_average_after"],
                      **{f"{c}_{k}": res[c][k] for c in ("cpu", "wall") for k in
                         ("ratio_suffix_vs_sequential", "ratio_suffix_incl_clean_run_vs_sequential", "ratio_prefix_vs_sequential")
                         if k in res[c]}, "max_abs_diff_p": res["max_abs_diff_p"]}, indent=1))
    assert err["suffix_vs_sequential"] <= 1e-6, "suffix patching disagrees with one pass per head"
    return res

if __name__ == "__main__": main()
