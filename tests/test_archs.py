"""The architecture matrix: every architecture of `labnb.models.TINY_ARCHS` (tiny random models) is read and patched the
same way: heads patched with their own activation change nothing, a zeroed head removes exactly its slice of the output
projection, one KV head reaches exactly its query group, the residual stream is read and written, shared-prefix FV
patching equals one pass per head, the in-process KV engine matches kvpress's pipeline, functional LoRA matches peft."""
import functools, sys

import pytest
import torch

from labnb.models import TINY_ARCHS, model_spec, tiny_model
from labnb.hooks import HeadPatch, add_to_resid, head_weight, hook_module, patch_heads, read_heads, read_resid

torch.set_num_threads(1)
ENCODERS = ("bert", "roberta", "modernbert")
DECODERS = tuple(a for a in TINY_ARCHS if a not in ENCODERS)
TEXTS = ["patching heads in", "every architecture"]


@functools.cache
def built(arch: str):
    "(model, tokenizer, spec, inputs) of a tiny model, built once per test session; tests never change its weights."
    m, tok = tiny_model(arch, seed=1)
    return m, tok, model_spec(m), tok(TEXTS, return_tensors="pt", padding=True)


@torch.no_grad()
def run(m, x) -> torch.Tensor:  # -> [batch, seq, vocab] (decoders) or [batch, seq, d_model] (encoders)
    o = m(**x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_patch_own_activation_changes_nothing(arch):
    m, tok, s, x = built(arch)
    with read_heads(m) as cache: clean = run(m, x)
    assert cache[0].shape[2:] == (s.n_heads, s.d_head)
    with patch_heads(m, [HeadPatch(l, h, cache[l][:, :, h]) for l in range(s.n_layers) for h in range(s.n_heads)]):
        same = run(m, x)
    assert torch.equal(same, clean)                                   # the same numbers pass through: bit-identical


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_zeroed_head_is_its_weight_slice(arch):
    "Zeroing head h of layer 1 changes the projection output by exactly -z_h W_h (W_h sliced by hand from the weight)."
    m, tok, s, x = built(arch)
    proj, h, outs = s.attn_out_proj(m, 1), s.n_heads - 1, {}
    keep = lambda k: (lambda mod, a, o: outs.__setitem__(k, o))
    with read_heads(m, [1]) as cache, hook_module(proj, keep("clean")): clean = run(m, x)
    with patch_heads(m, [HeadPatch(1, h, torch.zeros(s.d_head))]), hook_module(proj, keep("zeroed")): zeroed = run(m, x)
    w = proj.weight                                                    # Linear [out, in]; GPT-2's Conv1D [in, out]
    w_h = (w[:, h * s.d_head:(h + 1) * s.d_head].T if isinstance(proj, torch.nn.Linear) else w[h * s.d_head:(h + 1) * s.d_head])
    torch.testing.assert_close(head_weight(proj, h, s.d_head), w_h)
    torch.testing.assert_close(outs["zeroed"], outs["clean"] - cache[1][:, :, h] @ w_h, rtol=1e-5, atol=1e-5)
    assert (zeroed - clean).abs().max() > 1e-6


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_one_kv_head_reaches_exactly_its_query_group(arch):
    "Doubling the values of KV head g (in the value or fused QKV projection's output) changes exactly `spec.kv_group(g)`."
    m, tok, s, x = built(arch)
    with read_heads(m, [0]) as base: run(m, x)
    for g in range(s.n_kv_heads):
        def double(mod, a, out, sl=s.v_features(g)):
            out = out.clone(); out[..., sl] *= 2
            return out
        with hook_module(s.v_proj(m, 0), double), read_heads(m, [0]) as c: run(m, x)
        changed = [h for h in range(s.n_heads) if (c[0][:, :, h] - base[0][:, :, h]).abs().max() > 1e-6]
        assert changed == s.kv_group(g), (g, changed)
    assert len(s.kv_group(0)) == s.n_heads // s.n_kv_heads


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_residual_read_and_add(arch):
    m, tok, s, x = built(arch)
    with torch.no_grad(): hs = m(**x, output_hidden_states=True).hidden_states
    with read_resid(m) as res: clean = run(m, x)
    torch.testing.assert_close(res[0], hs[1], rtol=0, atol=0)          # block 0's output is hidden_states[1]
    with add_to_resid(m, 0, torch.zeros(s.d_model)): assert torch.equal(run(m, x), clean)
    v = torch.randn(s.d_model, generator=torch.Generator().manual_seed(0))
    with add_to_resid(m, 0, v, positions=-1): bumped = run(m, x)
    assert (bumped[:, -1] - clean[:, -1]).abs().max() > 1e-4
    if s.paths.causal: assert torch.equal(bumped[:, :-1], clean[:, :-1])   # earlier positions never see a later one
    with add_to_resid(m, 0, v, positions=None), read_resid(m, [0]) as res2: run(m, x)
    torch.testing.assert_close(res2[0], res[0] + v, rtol=1e-5, atol=1e-5)   # hooks run in the order they are entered


@pytest.mark.parametrize("arch", DECODERS)
def test_fv_prefix_patching_equals_one_pass_per_head(arch):
    "labnb.fv.core: every head patched at the last token, shared-prefix batches vs one full forward pass per head."
    from labnb.fv.core import patched_probs
    m, tok, s, x = built(arch)
    ids = tok("Q: hot\nA: cold\n\nQ: up\nA:")["input_ids"]
    mean = torch.randn(s.n_layers, s.n_heads, s.d_head, generator=torch.Generator().manual_seed(0))
    seq = patched_probs(m, s, ids, target=7, mean_heads=mean, method="sequential")
    pre = patched_probs(m, s, ids, target=7, mean_heads=mean, method="prefix", batch_size=3)
    assert seq.shape == (s.n_layers * s.n_heads,)
    torch.testing.assert_close(pre, seq, rtol=1e-4, atol=1e-7)
    assert seq.std() > 0                                                # the patches matter


def _kvpress_supports(m) -> bool:
    from kvpress.presses.base_press import SUPPORTED_MODELS
    return isinstance(m, SUPPORTED_MODELS)

KVPRESS_ARCHS = tuple(a for a in DECODERS if a in ("llama", "llama3", "mistral", "phi3", "qwen2", "qwen3", "gemma3_vlm"))


def test_kvpress_list_is_what_kvpress_supports():
    assert [a for a in DECODERS if _kvpress_supports(built(a)[0])] == list(KVPRESS_ARCHS)


KVPRESS_BROKEN = ("gemma3_vlm",)   # kvpress lists Gemma-3's multimodal class, but compresses it wrongly with this transformers


def test_kvpress_fails_on_gemma3_multimodal_with_a_press():
    "kvpress's own pipeline breaks on Gemma-3 (sliding layers left whole, full layers compressed): no reference there."
    from kvpress import KVPressTextGenerationPipeline
    from labnb.kv.engines import make_press
    m, tok, s, x = built("gemma3_vlm")
    with pytest.raises(RuntimeError, match="size of tensor"):
        KVPressTextGenerationPipeline(model=m, tokenizer=tok)("The key is 4721. " * 8, question="Key?", press=make_press("knorm", 0.5),
                                                              max_new_tokens=2)


@pytest.mark.parametrize("arch", KVPRESS_ARCHS)
def test_kv_engine_text_equals_kvpress_pipeline(arch):
    "labnb.kv.engines' in-process engine and kvpress's own pipeline give the same text under a press."
    from kvpress import KVPressTextGenerationPipeline
    from labnb.kv.engines import GenRequest, TransformersEngine, compression_ratio, make_press
    m, tok, s, x = built(arch)
    eng = TransformersEngine(m, tok, model_name=f"tiny-{arch}")
    c = "The key is 4721. " + "Grass is green and the sky is blue. " * 3
    name = "none" if arch in KVPRESS_BROKEN else "knorm"             # see the test below
    req = GenRequest(c, "What is the key?", "Answer:", press=name, budget=0.5 if name != "none" else 1.0, max_new_tokens=6)
    mine = eng.generate(req)
    assert mine.error_type is None, mine.error
    press = make_press(name, compression_ratio("ratio", req.budget, eng.encode(req)[0].shape[1]))
    ref = KVPressTextGenerationPipeline(model=m, tokenizer=tok)(c, question="What is the key?", answer_prefix="Answer:",
                                                                press=press, max_new_tokens=6)["answer"]
    assert mine.text == ref and mine.completion_tokens >= 1


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_functional_lora_equals_peft_merged(arch):
    "The architecture's default targets (q_proj/v_proj, qkv_proj, query_key_value, c_attn, query/value, Wqkv)."
    from labnb.llgbm.lora import LoraSpec, default_lora_modules, functional_lora, lora_layout, peft_model_of, random_lora
    m, tok, s, x = built(arch)
    spec = LoraSpec(rank=2, alpha=4.0, modules=default_lora_modules(m), layers=[0, -1])
    layout = lora_layout(m, spec)
    assert len(layout.targets) == 2 * len(spec.modules)
    lora = random_lora(layout, seed=3, std=0.2)
    with torch.no_grad():
        f = functional_lora(m, lora, spec.scale, **x)
        f = f.logits if hasattr(f, "logits") else f.last_hidden_state
        merged = peft_model_of(m, spec, lora).merge_and_unload()
        ref = run(merged, x)
    torch.testing.assert_close(f, ref, rtol=1e-4, atol=1e-5)
    assert (f - run(m, x)).abs().max() > 1e-4                            # the adapter matters


# ---- hub revisions, offline -------------------------------------------------------------------------------------------

def _hub_cache(root, repo: str, revisions: dict) -> dict:
    "A Hugging Face cache holding `repo` at each revision (`{rev: seed}`): snapshots by commit, `refs/<rev>` -> commit."
    import hashlib
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    commits = {}
    for rev, seed in revisions.items():
        m, tok = tiny_model("gpt_neox", seed=seed)
        sha = hashlib.sha1(f"{repo}@{rev}".encode()).hexdigest()
        m.save_pretrained(folder / "snapshots" / sha); tok.save_pretrained(folder / "snapshots" / sha)
        (folder / "refs" / rev).write_text(sha)
        commits[rev] = sha
    (folder / "refs" / "main").write_text(commits[rev])
    return commits


def test_hub_revisions_load_offline_with_provenance(tmp_path, monkeypatch):
    "`load_model('hub:ORG/NAME', revision=...)` and the bandit grid `hub:ORG/NAME@r1,r2` read the right snapshot offline."
    import huggingface_hub.constants as hc
    from labnb.bandit.core import model_grid
    from labnb.models import load_model, model_meta
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path)); monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    commits = _hub_cache(tmp_path, "pythia-like/tiny", {"step1": 0, "step2": 1})
    want = {rev: tiny_model("gpt_neox", seed=seed)[0].state_dict() for rev, seed in (("step1", 0), ("step2", 1))}
    same = lambda m, sd: all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    m, tok = load_model("hub:pythia-like/tiny", revision="step1", device="cpu", dtype="fp32")
    assert same(m, want["step1"]) and not same(m, want["step2"])
    meta = model_meta(m)
    assert (meta["model_id"], meta["revision"], meta["commit"]) == ("hub:pythia-like/tiny", "step1", commits["step1"])
    g = model_grid("hub:pythia-like/tiny@step1,step2")
    assert list(g.checkpoints) == ["step1", "step2"] and g.baseline == "step2"
    m2, _ = g.loader(g.checkpoints["step2"])
    assert same(m2, want["step2"]) and model_meta(m2)["revision"] == "step2" and model_meta(m2)["commit"] == commits["step2"]
    with pytest.raises(Exception, match="step3"): load_model("hub:pythia-like/tiny", revision="step3")


# ---- precision and devices --------------------------------------------------------------------------------------------
# bf16 against fp32 on the same weights: probabilities within rtol 5e-2 / atol 1e-3 (bf16 keeps 8 bits of mantissa).
BF16 = dict(rtol=5e-2, atol=1e-3)


@pytest.mark.parametrize("arch", DECODERS)
def test_bf16_head_sweep_hooks_and_lora_match_fp32(arch):
    from labnb.fv.core import patched_probs
    from labnb.llgbm.lora import LoraSpec, default_lora_modules, functional_lora, lora_layout, random_lora
    m32, tok = tiny_model(arch, seed=1)
    m16, _ = tiny_model(arch, seed=1, dtype="bf16")
    s = model_spec(m16)
    assert next(m16.parameters()).dtype == torch.bfloat16
    ids = tok("Q: hot\nA: cold\n\nQ: up\nA:")["input_ids"]
    mean = torch.randn(s.n_layers, s.n_heads, s.d_head, generator=torch.Generator().manual_seed(0))
    p32 = patched_probs(m32, s, ids, target=7, mean_heads=mean, method="prefix")
    p16 = patched_probs(m16, s, ids, target=7, mean_heads=mean, method="prefix")
    torch.testing.assert_close(p16.float(), p32, **BF16)
    x = tok(TEXTS, return_tensors="pt", padding=True)
    with read_heads(m16, [0]) as c, add_to_resid(m16, 0, torch.ones(s.d_model)), read_resid(m16, [0]) as r: out = run(m16, x)
    assert c[0].dtype == r[0].dtype == out.dtype == torch.bfloat16          # hooks keep the model's dtype
    spec = LoraSpec(rank=2, alpha=4.0, modules=default_lora_modules(m32), layers=[0])
    lora = random_lora(lora_layout(m32, spec), seed=0, std=0.2)
    with torch.no_grad():
        l32 = functional_lora(m32, lora, spec.scale, **x).logits.softmax(-1)
        l16 = functional_lora(m16, lora, spec.scale, **x).logits.float().softmax(-1)
    torch.testing.assert_close(l16, l32, **BF16)


def test_bf16_kv_engine_and_embeddings():
    from labnb.kv.engines import GenRequest, TransformersEngine
    from labnb.embeddings import encode_batch
    res = {}
    for dt in ("fp32", "bf16"):
        m, tok = tiny_model("qwen2", seed=1, dtype=dt)
        r = TransformersEngine(m, tok).generate(GenRequest("The key is 4721. " * 4, "Key?", "A:", press="knorm", budget=0.5,
                                                           max_new_tokens=4))
        assert r.error_type is None, r.error
        res[dt] = r.kv_cache_bytes
    assert res["fp32"] == 2 * res["bf16"]                                    # the cache is held in the model's dtype
    embs = {}
    for dt in ("fp32", "bf16"):
        m, tok = tiny_model("bert", seed=1, dtype=dt)
        x = tok(TEXTS, return_tensors="pt", padding=True)
        embs[dt] = encode_batch(m, x["input_ids"], x["attention_mask"], layers=[1, 2])
    for l in embs["fp32"]:
        a, b = torch.as_tensor(embs["fp32"][l]), torch.as_tensor(embs["bf16"][l]).float()
        assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999


def test_gguf_dequantized_model_loads_in_bf16():
    from labnb.models import load_model, model_meta
    try: m32, tok = load_model("smollm2-135m", device="cpu", dtype="fp32")
    except ModuleNotFoundError as e: pytest.skip(str(e))
    m16, _ = load_model("smollm2-135m", device="cpu", dtype="bf16")
    assert model_meta(m16)["dtype"] == "bfloat16" and next(m16.parameters()).dtype == torch.bfloat16
    x = tok(["The capital of France is"], return_tensors="pt")
    p32, p16 = run(m32, x)[0, -1].softmax(-1), run(m16, x)[0, -1].float().softmax(-1)
    assert p32.argmax() == p16.argmax()
    torch.testing.assert_close(p16, p32, rtol=0.1, atol=5e-3)


def test_device_choice(monkeypatch):
    from labnb.core import ConfigError, default_device, default_dtype, resolve_dtype
    monkeypatch.setenv("LABNB_DEVICE", "cpu"); assert default_device() == "cpu"
    monkeypatch.setenv("LABNB_DEVICE", "cuda:1")
    if torch.cuda.device_count() > 1: assert default_device() == "cuda:1" and default_dtype() == torch.bfloat16
    else: pytest.raises(ConfigError, default_device)             # a device this machine does not have is refused at once
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True); monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_device() == "cuda:1" and default_dtype() == torch.bfloat16
    monkeypatch.setenv("LABNB_DEVICE", "gpu"); pytest.raises(ConfigError, default_device)
    monkeypatch.setenv("LABNB_DEVICE", "cpu"); monkeypatch.setenv("LABNB_DTYPE", "fp16"); assert default_dtype() == torch.float16
    assert resolve_dtype("bf16") == torch.bfloat16


class _CountTransfers(torch.overrides.TorchFunctionMode):
    """Counts calls made by labnb's code that copy a tensor to the host or wait for it (`.cpu()`, `.item()`,
    `.tolist()`, `.numpy()`); on a GPU each is a device-to-host transfer. Calls inside torch itself (e.g. AdamW reading
    its step counters, which live on the host anyway) are not labnb's."""
    NAMES = {"cpu", "item", "tolist", "numpy"}
    def __init__(self): super().__init__(); self.n = 0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES and "/labnb/" in sys._getframe(1).f_code.co_filename: self.n += 1
        return func(*args, **(kwargs or {}))


def test_lora_training_has_no_host_round_trip_per_step(monkeypatch, tmp_path):
    "A teacher's training loop moves nothing to the host per step: 3 and 9 steps make the same number of transfers."
    from labnb.llgbm.lora import LoraSpec, TeacherConfig, train_teacher
    import labnb.llgbm.lora as L
    pairs = [(f"w{i}", f"v{i}") for i in range(40)]
    monkeypatch.setattr(L, "task_pairs", lambda name: pairs)
    m, tok = tiny_model("llama", seed=0)
    counts = {}
    for steps in (3, 9):
        with _CountTransfers() as c:
            train_teacher(m, tok, "fv/x", LoraSpec(rank=2, alpha=4, layers=[0]), TeacherConfig(steps=steps, n_train=24, n_eval=8),
                          progress=False)
        counts[steps] = c.n
    assert counts[3] == counts[9], counts


def test_head_sweep_transfers_once_per_batch():
    "labnb.fv.core's shared-prefix sweep: a fixed number of host transfers per batch of heads, none per head."
    from labnb.fv.core import patched_probs
    m, tok, s, x = built("qwen2")
    ids = tok("Q: hot\nA: cold\n\nQ: up\nA:")["input_ids"]
    mean = torch.zeros(s.n_layers, s.n_heads, s.d_head)
    n = {}
    for bs in (s.n_total_heads, s.n_heads):
        with _CountTransfers() as c: patched_probs(m, s, ids, target=7, mean_heads=mean, method="prefix", batch_size=bs)
        n[bs] = c.n
    assert 1 <= n[s.n_total_heads] <= 2 and n[s.n_heads] == n[s.n_total_heads] * s.n_layers, n   # per batch, not per head


def test_auto_batch_size_fits_an_8b_sweep_in_24gb(monkeypatch):
    "Llama-3.1-8B's shapes (from its config, no weights): every batch of the 1024-head sweep fits next to the weights."
    from transformers import LlamaConfig
    from labnb.models import auto_batch_size, row_bytes
    cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM
        meta = AutoModelForCausalLM.from_config(cfg)
    s = model_spec(meta)
    assert (s.n_total_heads, s.n_kv_heads, s.d_head) == (1024, 8, 128)
    weights = sum(p.numel() for p in meta.parameters()) * 2                     # bf16
    free = 24 * 10**9 - weights
    for n_tokens in (200, 800, 3000):
        b = auto_batch_size(s, n_tokens, free_bytes=free, vocab=cfg.vocab_size)
        assert 1 <= b and b * row_bytes(s, n_tokens, vocab=cfg.vocab_size) <= free
    assert auto_batch_size(s, 800, free_bytes=free) > auto_batch_size(s, 3000, free_bytes=free)
    monkeypatch.setenv("LABNB_BATCH", "7"); assert auto_batch_size(s, 800, free_bytes=free) == 7
    from labnb.core import ConfigError
    monkeypatch.setenv("LABNB_BATCH", "0"); pytest.raises(ConfigError, auto_batch_size, s, 800)


# ---- the real settings' configs (validated through the workflows' own loaders; nothing downloaded) --------------------
from pathlib import Path
REAL = Path(__file__).resolve().parents[1] / "configs" / "real"


def _meta_model(cfg):
    from transformers import AutoModelForCausalLM
    with torch.device("meta"): return AutoModelForCausalLM.from_config(cfg)


def test_real_fv_qwise_llama31_8b_config():
    from labnb.sweep import load_sweep
    from labnb.fv.qwise import FVConfig
    sw = load_sweep(REAL / "fv_qwise_llama31_8b.yaml")
    assert len(sw.runs) == 1 and sw.runs[0].experiment == "fv_qwise"
    p = sw.runs[0].params
    cfg = FVConfig(n_demos=p["n_demos"], n_trials=p["n_trials"], top_k=p["top_k"], n_eval=p["n_eval"], seed=p["seed"],
                   alphas=p["alphas"])
    assert (p["model"], cfg.n_demos, cfg.top_k, cfg.alphas, cfg.n_trials, cfg.n_eval, cfg.seed) == \
           ("hub:meta-llama/Llama-3.1-8B", 9, 20, [1.0], 25, 50, 0)
    spec = FVConfig()                                                   # the library's defaults are the design's constants
    assert (spec.n_demos, spec.top_k, spec.alphas, spec.n_trials, spec.n_eval, spec.seed) == (9, 20, [1.0], 25, 50, 0)


def test_real_llgbm_qwen25_config_targets_exist():
    from transformers import Qwen2Config
    from labnb.llgbm.core import make_config
    from labnb.llgbm.lora import lora_layout
    cfg = make_config("baseline", REAL / "llgbm_qwen25_1p5b.yaml")
    assert (cfg.model.name, cfg.lora.rank, cfg.lora.alpha) == ("hub:Qwen/Qwen2.5-1.5B", 16, 32.0)
    assert sorted(cfg.lora.modules) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    qwen = _meta_model(Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True))   # Qwen2.5-1.5B's shapes
    layout = lora_layout(qwen, cfg.lora)
    assert len(layout.targets) == 7 * 28 and model_spec(qwen).n_layers == 28


def test_real_layer_bandit_pythia_config():
    from labnb.bandit.core import model_grid
    from labnb.bandit.run import load_bandit_config
    cfg = load_bandit_config(REAL / "layer_bandit_pythia.yaml")
    g = model_grid(cfg.grid)
    assert g.model_id == "EleutherAI/pythia-410m" and g.baseline == "step143000" and len(g.checkpoints) == 5


def test_real_kv_vllm_config(monkeypatch):
    from labnb.kv.config import load_kv_config
    monkeypatch.delenv("LABNB_VLLM_URL", raising=False)
    cfg = load_kv_config(REAL / "kv_vllm.yaml")
    assert cfg.engine.name.startswith("openai") and cfg.engine.kv_field is False and cfg.run.budgets == [1.0]
    assert cfg.engine.base_url == "http://127.0.0.1:8000/v1"
    with pytest.raises(Exception, match="kv_field"): load_kv_config(REAL / "kv_vllm.yaml", ["run.budgets=[1.0,0.5]"])


def test_bf16_teacher_training_matches_fp32(monkeypatch):
    "LLGBM's teachers (peft LoRA, AdamW) train in bf16: the first-step loss equals fp32's within BF16, losses stay finite."
    import labnb.llgbm.lora as L
    from labnb.llgbm.lora import LoraSpec, TeacherConfig, train_teacher
    monkeypatch.setattr(L, "task_pairs", lambda name: [(f"w{i}", f"v{i}") for i in range(40)])
    losses = {}
    for dt in ("fp32", "bf16"):
        m, tok = tiny_model("qwen2", seed=0, dtype=dt)
        lora, man = train_teacher(m, tok, "fv/x", LoraSpec(rank=2, alpha=4, layers=[0, 1]), TeacherConfig(steps=4, n_train=24, n_eval=8),
                                  progress=False)
        assert next(m.parameters()).dtype == (torch.bfloat16 if dt == "bf16" else torch.float32)   # peft keeps adapters fp32
        losses[dt] = torch.tensor(man["losses"])
    assert torch.isfinite(losses["bf16"]).all()
    torch.testing.assert_close(losses["bf16"][0], losses["fp32"][0], **BF16)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_saved_folder_loads_with_the_same_spec_and_outputs(arch, tmp_path):
    "`load_model(folder)` picks the right class (causal LM, multimodal wrapper or encoder) and reproduces the model."
    from labnb.models import load_model, model_meta
    m, tok, s, x = built(arch)
    m.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    m2, tok2 = load_model(str(tmp_path), device="cpu", dtype="fp32")
    assert type(m2) is type(m) and model_spec(m2) == s
    assert model_meta(m2)["kind"] == ("causal" if s.paths.causal else "encoder")
    torch.testing.assert_close(run(m2, x), run(m, x), rtol=1e-5, atol=1e-6)


def test_gpu_load_puts_weights_straight_on_the_device(tmp_path, monkeypatch):
    "On CUDA, `load_model` asks transformers for `device_map=<device>` (no host copy of an 8B model first), in the dtype asked."
    import labnb.models as M
    m, tok, s, x = built("qwen2")
    m.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    seen = {}
    class Loaded:                                                        # stands in for a model on a GPU this machine lacks
        config = m.config
        def to(self, device): seen["to"] = device; return self
        def eval(self): return self
    class Auto:
        @staticmethod
        def from_pretrained(folder, **kw): seen.update(kw); return Loaded()
    monkeypatch.setattr(M, "_auto_cls", lambda kind: Auto)
    M.load_model(str(tmp_path), device="cuda:0", dtype="fp16")
    assert (seen["device_map"], seen["dtype"], seen["to"]) == ("cuda:0", torch.float16, "cuda:0")
    monkeypatch.delenv("LABNB_DTYPE", raising=False)
    seen.clear(); M.load_model(str(tmp_path), device="cpu")
    assert "device_map" not in seen and seen["dtype"] == torch.float32
