#!/usr/bin/env bash
# GPU smoke run: each workflow for a short while on a small hub model; timings and peak GPU memory go to one JSON file.
# Not run in CI. Needs a CUDA GPU, the hub (or a warm Hugging Face cache) and `make setup`.
#
#   benchmarks/gpu_smoke.sh [OUT.json]                    # default: benchmarks/results/gpu_smoke.json
#   MODEL=Qwen/Qwen2.5-0.5B ENCODER=EleutherAI/pythia-160m REVS=step1000,step143000 benchmarks/gpu_smoke.sh
#   Dry run of the script itself on a CPU with the offline models (seconds, no GPU figures):
#   ALLOW_CPU=1 LABNB_DEVICE=cpu MODEL=smollm2-135m ENCODER=minilm REVS=main LORA_STEPS=2 KV_REPEAT=5 benchmarks/gpu_smoke.sh /tmp/s.json
#
# Steps (each one timed, with torch.cuda.max_memory_allocated after it):
#   load      load_model(MODEL) in bf16 on the GPU
#   fv_sweep  labnb.fv.core.patched_probs: every head patched at the last token of a few-shot prompt (shared prefix),
#             batch size from labnb.models.auto_batch_size
#   lora      labnb.llgbm.lora.train_teacher: 20 peft steps of a rank-8 LoRA on q_proj/v_proj (an fv task from LABNB_DATA)
#   kv        labnb.kv.engines.TransformersEngine: one needle prompt at budgets 1.0 / 0.5 / 0.25 with SnapKV
#   embed     labnb.embeddings.encode_batch of the bandit's grid model at two revisions, all layers
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu_smoke.json}
export MODEL=${MODEL:-Qwen/Qwen2.5-0.5B} ENCODER=${ENCODER:-EleutherAI/pythia-160m} REVS=${REVS:-step1000,step143000}
export LABNB_DEVICE=${LABNB_DEVICE:-cuda} OUT
mkdir -p "$(dirname "$OUT")"
.venv/bin/python - <<'PY'
import json, os, platform, time
import torch
from labnb.core import default_device, default_dtype, provenance
from labnb.models import load_model, model_spec, model_meta, auto_batch_size
from labnb.store import atomic_write_json

cuda = torch.cuda.is_available()
assert cuda or os.environ.get("ALLOW_CPU") == "1", "no CUDA device: this script measures GPU runs (ALLOW_CPU=1: dry run)"
dev, steps = default_device(), {}
LORA_STEPS, KV_REPEAT = int(os.environ.get("LORA_STEPS", 20)), int(os.environ.get("KV_REPEAT", 200))

def step(name):
    def wrap(fn):
        if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        extra = fn() or {}
        if cuda: torch.cuda.synchronize()
        steps[name] = {"seconds": round(time.perf_counter() - t, 3),
                       "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None, **extra}
        print(name, steps[name], flush=True)
    return wrap

ctx = {}
@step("load")
def _():
    ctx["m"], ctx["tok"] = load_model(os.environ["MODEL"])
    return {"model": model_meta(ctx["m"])}

@step("fv_sweep")
def _():
    from labnb.fv.core import patched_probs
    m, tok = ctx["m"], ctx["tok"]; s = model_spec(m)
    ids = tok("hot: cold\nup: down\nbig: small\nfast: slow\nwet:")["input_ids"]
    bs = auto_batch_size(s, len(ids), dtype=m.dtype, vocab=m.config.vocab_size)
    mean = torch.zeros(s.n_layers, s.n_heads, s.d_head, device=m.device, dtype=m.dtype)
    p = patched_probs(m, s, ids, target=ids[-1], mean_heads=mean, method="prefix", batch_size=bs)
    return {"heads": s.n_total_heads, "batch_size": bs, "n_tokens": len(ids), "finite": bool(torch.isfinite(p).all())}

@step("lora")
def _():
    from labnb.llgbm.lora import LoraSpec, TeacherConfig, train_teacher
    m, tok = ctx["m"], ctx["tok"]; n = model_spec(m).n_layers
    lora, man = train_teacher(m, tok, "fv/antonym", LoraSpec(rank=8, alpha=16, layers=list(range(n))),
                              TeacherConfig(steps=LORA_STEPS, batch_size=16, n_train=256, n_eval=32), progress=False)
    return {"steps": LORA_STEPS, "final_loss": man["final_loss"], "accuracy": man["accuracy"]}

@step("kv")
def _():
    from labnb.kv.engines import GenRequest, TransformersEngine
    eng = TransformersEngine(ctx["m"], ctx["tok"], model_name=os.environ["MODEL"])
    ctx_text = "The grass is green. The sky is blue. " * KV_REPEAT + "The pass key is 71432. " + "The sun is warm. " * KV_REPEAT
    out = {}
    for b in (1.0, 0.5, 0.25):
        r = eng.generate(GenRequest(ctx_text, "What is the pass key?", "Answer:", press="snapkv", budget=b, max_new_tokens=12))
        out[str(b)] = {"text": r.text, "latency_s": r.latency_s, "kv_cache_mb": (r.kv_cache_bytes or 0) / 2**20, "error": r.error}
    return {"budgets": out}

@step("embed")
def _():
    from labnb.embeddings import encode_batch
    texts = ["A man is playing a guitar.", "The stock market fell sharply today.", "Cats sleep most of the day."] * 16
    res = {}
    for rev in os.environ["REVS"].split(","):
        m, tok = load_model(os.environ["ENCODER"], revision=rev)
        x = tok(texts, return_tensors="pt", padding=True).to(m.device)
        layers = list(range(1, model_spec(m).n_layers + 1))
        e = encode_batch(m, x["input_ids"], x["attention_mask"], layers=layers)
        res[rev] = {"layers": len(e), "commit": model_meta(m).get("commit")}
        del m
        if cuda: torch.cuda.empty_cache()
    return {"revisions": res}

out = {"device": torch.cuda.get_device_name() if cuda else dev, "torch": torch.__version__, "dtype": str(default_dtype(dev)),
       "host": platform.node(), "provenance": provenance(), "steps": steps}
atomic_write_json(os.environ["OUT"], out)
print("wrote", os.environ["OUT"])
PY
