"""All-layer embedding extraction: one forward pass for every hidden state (B) vs one forward pass per layer (A).

Same model, same texts (STS-B test sentences), same pooling; both methods must give identical embeddings. A and B are
timed interleaved (A B A B ...), torch pinned to `--threads`, load average recorded before and after; the ratio is
median(A) / median(B). Also times the representation metrics of all layers (`all_layer_metrics`, one pass).
Writes benchmarks/results/layers.json.

    python benchmarks/bench_layers.py [--model minilm] [--n-texts 256] [--threads 1] [--reps 5]
"""
import argparse

import numpy as np

from common import interleave, load, pin_threads, write
from labnb.core import provenance
from labnb.data import load_dataset
from labnb.models import load_model, tiny_model, model_meta
from labnb.embeddings import precompute_embeddings, n_hidden_states
from labnb.bandit.metrics import all_layer_metrics


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", help="offline model name, local folder or tiny:<arch>")
    ap.add_argument("--n-texts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per method")
    a = ap.parse_args(argv)
    threads = pin_threads(a.threads)
    load0 = load()
    kind, _, arch = a.model.partition(":")
    model, tok = tiny_model(arch) if kind == "tiny" else load_model(a.model)
    texts = [r.s1 for r in load_dataset("stsb", "test")][: a.n_texts]
    layers = list(range(n_hidden_states(model)))
    common = dict(pooling=a.pooling, batch_size=a.batch, max_length=a.max_length, model_id=a.model, progress=False)
    one = lambda: precompute_embeddings(model, tok, texts, layers=layers, **common)
    per = lambda: {l: precompute_embeddings(model, tok, texts, layers=[l], **common)[l] for l in layers}
    e1, e2 = one(), per()
    max_diff = max(float(np.abs(np.asarray(e1[l]) - np.asarray(e2[l])).max()) for l in layers)
    if max_diff > 1e-4: raise SystemExit(f"methods disagree: max |diff| = {max_diff}")
    t = interleave({"one_pass_per_layer": per, "one_pass_all_layers": one}, reps=a.reps, warmup=0)
    metrics = interleave({"all_layer_metrics": lambda: all_layer_metrics(
        model, tok, texts, pooling=a.pooling, batch_size=a.batch, max_length=a.max_length)}, reps=1, warmup=0)
    meta = {k: v for k, v in model_meta(model).items() if k != "source"}   # no machine paths in committed results
    write("layers", {"benchmark": "all-layer extraction, one pass per layer (A) vs one pass for all layers (B), interleaved",
                     "model": meta, "n_texts": len(texts), "n_layers": len(layers), "batch": a.batch,
                     "max_length": a.max_length, "threads": threads, "seconds": {**t, **metrics},
                     "ratio_per_layer_over_one_pass": round(t["one_pass_per_layer"]["median_s"]
                                                            / t["one_pass_all_layers"]["median_s"], 2),
                     "max_abs_diff": max_diff, "loadavg_start": load0, "loadavg_end": load(), "provenance": provenance()})


if __name__ == "__main__":
    main()
