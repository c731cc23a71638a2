"""Heads patched per second: prefix-cached batched patching vs one forward pass per head (and batched full copies).

Same model, same prompt (a 10-shot function-vector prompt), same mean activations; the three methods must give the
same p(target) per head. The per-head baseline is timed on a spread subset of heads (it is a rate), the prefix method
on all heads. Writes benchmarks/results/fv.json.

    python benchmarks/bench_fv.py [--model smollm2-135m] [--n-seq 27] [--threads 1]
"""
import argparse, json, time

import pandas as pd
import torch

from labnb.core import paths, provenance
from labnb.store import atomic_write_json, read_json
from labnb.runner import strip_home
from labnb.models import load_model, tiny_model, model_spec, model_meta
from labnb.fv import (PromptFormat, relation_rows, sample_trials, corrupted_prompt, clean_prompt, encode, answer_token,
                      score_prompts, patched_probs, all_heads)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="offline model name or tiny:<arch>")
    ap.add_argument("--task", default="fv/present-past")
    ap.add_argument("--n-demos", type=int, default=10)
    ap.add_argument("--n-seq", type=int, default=27, help="heads timed with one forward pass each")
    ap.add_argument("--batch", type=int, default=54, help="heads per forward pass (batched and prefix)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(paths().home / "benchmarks" / "results" / "fv.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    kind, _, arch = a.model.partition(":")
    model, tok = tiny_model(arch) if kind == "tiny" else load_model(a.model)
    spec, fmt = model_spec(model), PromptFormat()
    rows = pd.DataFrame(relation_rows(a.task)).assign(q_id=a.task)
    trial = sample_trials(rows, 1, a.n_demos, seed=0)[0]
    ids, target = encode(tok, corrupted_prompt(trial, fmt)), answer_token(tok, trial["query"]["output"], fmt)
    clean = score_prompts(model, spec, [encode(tok, clean_prompt(trial, fmt))], [target], read_heads=True)
    mean = clean["heads"][0]                                             # [L, H, d_head]
    layers, heads = all_heads(spec)
    n = len(layers)
    sub = torch.linspace(0, n - 1, min(a.n_seq, n)).round().long()

    def timed(method, ls, hs, reps=1):
        patched_probs(model, spec, ids, target, mean, method, a.batch, ls[:2], hs[:2])      # warm-up
        t0 = time.perf_counter()
        for _ in range(reps): p = patched_probs(model, spec, ids, target, mean, method, a.batch, ls, hs)
        return p, (time.perf_counter() - t0) / reps

    p_seq, t_seq = timed("sequential", layers[sub], heads[sub])
    p_pre, t_pre = timed("prefix", layers, heads, reps=2)
    n_bat = min(a.batch, n)
    bsub = torch.linspace(0, n - 1, n_bat).round().long()
    p_bat, t_bat = timed("batched", layers[bsub], heads[bsub])
    rate = {"sequential": len(sub) / t_seq, "batched": n_bat / t_bat, "prefix": n / t_pre}
    err_seq = float((p_pre[sub] - p_seq).abs().max()); err_bat = float((p_pre[bsub] - p_bat).abs().max())
    res = {"model": model_meta(model), "task": a.task, "n_demos": a.n_demos, "prompt_tokens": len(ids),
           "n_layers": spec.n_layers, "n_heads": spec.n_heads, "n_kv_heads": spec.n_kv_heads, "heads_total": n,
           "heads_timed": {"sequential": len(sub), "batched": n_bat, "prefix": n}, "batch": a.batch, "threads": a.threads,
           "seconds": {"sequential": t_seq, "batched": t_bat, "prefix_all_heads": t_pre},
           "heads_per_second": rate, "ratio_prefix_vs_sequential": rate["prefix"] / rate["sequential"],
           "ratio_batched_vs_sequential": rate["batched"] / rate["sequential"],
           "max_abs_diff_p": {"prefix_vs_sequential": err_seq, "prefix_vs_batched": err_bat},
           "p_range": [float(p_pre.min()), float(p_pre.max())], "provenance": provenance({"trials": 0})}
    res = strip_home(res)                                              # no machine paths in the committed figures
    atomic_write_json(a.out, res)
    print(json.dumps({k: res[k] for k in ("prompt_tokens", "heads_per_second", "ratio_prefix_vs_sequential",
                                           "ratio_batched_vs_sequential", "max_abs_diff_p")}, indent=1))
    assert err_seq < 1e-5 and err_bat < 1e-5, "methods disagree"
    return res

if __name__ == "__main__": main()
