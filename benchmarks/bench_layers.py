"""All-layer embedding extraction: one forward pass for every hidden state vs one forward pass per layer.

Same model, same texts (STS-B test sentences), same pooling; both methods must give identical embeddings. The ratio
is (time of one pass per layer) / (time of one pass for all layers), measured in the same run. Also times the
representation metrics of all layers (`labnb.repmetrics.all_layer_metrics`, one pass) for reference.
Writes benchmarks/results/layers.json.

    python benchmarks/bench_layers.py [--model minilm] [--n-texts 256] [--threads 1] [--repeats 2]
"""
import argparse, time

import numpy as np
import torch

from labnb.core import paths, provenance
from labnb.store import atomic_write_json
from labnb.data import load_dataset
from labnb.models import load_model, tiny_model, model_meta
from labnb.embeddings import precompute_embeddings, n_hidden_states
from labnb.repmetrics import all_layer_metrics


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", help="offline model name, local folder or tiny:<arch>")
    ap.add_argument("--n-texts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings per method")
    ap.add_argument("--out", default=str(paths().home / "benchmarks" / "results" / "layers.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    kind, _, arch = a.model.partition(":")
    model, tok = tiny_model(arch) if kind == "tiny" else load_model(a.model)
    texts = [r.s1 for r in load_dataset("stsb", "test")][: a.n_texts]
    layers = list(range(n_hidden_states(model)))
    common = dict(pooling=a.pooling, batch_size=a.batch, max_length=a.max_length, model_id=a.model, progress=False)
    t_one, one = _best_of(lambda: precompute_embeddings(model, tok, texts, layers=layers, **common), a.repeats)
    t_per, per = _best_of(lambda: {l: precompute_embeddings(model, tok, texts, layers=[l], **common)[l] for l in layers}, a.repeats)
    max_diff = max(float(np.abs(np.asarray(one[l]) - np.asarray(per[l])).max()) for l in layers)
    if max_diff > 1e-4: raise SystemExit(f"methods disagree: max |diff| = {max_diff}")
    t_metrics, _ = _best_of(lambda: all_layer_metrics(model, tok, texts, pooling=a.pooling, batch_size=a.batch,
                                                      max_length=a.max_length), 1)
    meta = {k: v for k, v in model_meta(model).items() if k != "source"}   # no machine paths in committed results
    res = {"benchmark": "all-layer extraction, one pass vs one pass per layer", "model": meta,
           "n_texts": len(texts), "n_layers": len(layers), "batch": a.batch, "max_length": a.max_length, "threads": a.threads,
           "seconds_one_pass_all_layers": round(t_one, 3), "seconds_one_pass_per_layer": round(t_per, 3),
           "ratio_per_layer_over_one_pass": round(t_per / t_one, 2), "max_abs_diff": max_diff,
           "seconds_all_layer_metrics_one_pass": round(t_metrics, 3), **provenance()}
    atomic_write_json(a.out, res)
    print({k: res[k] for k in ("n_layers", "seconds_one_pass_all_layers", "seconds_one_pass_per_layer",
                               "ratio_per_layer_over_one_pass", "max_abs_diff", "seconds_all_layer_metrics_one_pass")})


if __name__ == "__main__":
    main()
