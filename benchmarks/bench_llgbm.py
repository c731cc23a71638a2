"""LLGBM benchmark, a ratio measured in one run.

Functional LoRA forward+backward (generated A/B merged into the frozen weights through `torch.func.functional_call`,
gradient to the generator's output) against the plain base model forward+backward with a gradient to the same target
weights (what fine-tuning those projections costs), on the same batch; interleaved (A B A B ...), torch pinned to
BENCH_THREADS (default 1), load average before and after, medians with min and max.

Writes benchmarks/results/llgbm.json. Model: BENCH_LLGBM_MODEL (default smollm2-135m; tiny-llama for a quick check);
batch BENCH_LLGBM_BATCH x BENCH_LLGBM_SEQ tokens (default 4 x 32), BENCH_LLGBM_REPS repetitions (default 7).
"""
import os

import torch

from common import interleave, load, pin_threads, write
from labnb.core import paths, provenance
from labnb.llgbm.lora import LoraSpec, lora_layout, random_lora, flatten_lora, unflatten_lora, functional_lora
from labnb.llgbm.core import ModelConfig, load_base, make_config

MODEL = os.environ.get("BENCH_LLGBM_MODEL", "smollm2-135m")
BATCH, SEQ = int(os.environ.get("BENCH_LLGBM_BATCH", 4)), int(os.environ.get("BENCH_LLGBM_SEQ", 32))
REPS = int(os.environ.get("BENCH_LLGBM_REPS", 7))


def main():
    threads = pin_threads(int(os.environ.get("BENCH_THREADS", 1)))
    load0 = load()
    torch.manual_seed(0)
    model, tok = load_base(ModelConfig(name=MODEL))
    spec = make_config("delta_multi", paths().home / "configs" / "llgbm" / "smollm2.yaml").lora if not MODEL.startswith("tiny-") \
        else LoraSpec(rank=4, alpha=8, layers=[0, 1])
    lay = lora_layout(model, spec)
    ids = torch.randint(10, min(tok.vocab_size, 30000), (BATCH, SEQ))
    targets = [model.get_parameter(f"{n}.weight") for n in lay.names]
    vec0 = flatten_lora(random_lora(lay, 0), lay)

    def base_step():
        for w in targets: w.requires_grad_(True); w.grad = None
        model(input_ids=ids).logits.float().pow(2).mean().backward()
        for w in targets: w.requires_grad_(False); w.grad = None

    def lora_step():
        vec = vec0.clone().requires_grad_(True)   # stands for the generator's output
        functional_lora(model, unflatten_lora(vec, lay), spec.scale, input_ids=ids).logits.float().pow(2).mean().backward()
        assert vec.grad is not None and vec.grad.abs().sum() > 0

    t = interleave({"base": base_step, "functional_lora": lora_step}, reps=REPS)
    return write("llgbm", {"benchmark": "functional LoRA fwd+bwd (A) vs base fwd+bwd with grads to the same weights (B)",
                           "model": MODEL, "batch": BATCH, "seq": SEQ, "lora": spec.to_dict(), "n_lora_params": lay.n_params,
                           "threads": threads, "seconds": t,
                           "ratio_functional_lora_over_base": t["functional_lora"]["median_s"] / t["base"]["median_s"],
                           "loadavg_start": load0, "loadavg_end": load(), "provenance": provenance({"torch": 0})})


if __name__ == "__main__":
    main()
