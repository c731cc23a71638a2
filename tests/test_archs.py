"""The architecture matrix: every architecture of `labnb.models.TINY_ARCHS` (tiny random models) is read and patched the
same way: heads patched with their own activation change nothing, a zeroed head removes exactly its slice of the output
projection, one KV head reaches exactly its query group, the residual stream is read and written, shared-prefix FV
patching equals one pass per head, the in-process KV engine matches kvpress's pipeline, functional LoRA matches peft."""
import functools

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
    "labnb.fv: every head patched at the last token, shared-prefix batches vs one full forward pass per head."
    from labnb.fv import patched_probs
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

KVPRESS_ARCHS = tuple(a for a in DECODERS if a in ("llama", "llama3", "mistral", "phi3", "qwen2", "qwen3"))


def test_kvpress_list_is_what_kvpress_supports():
    assert [a for a in DECODERS if _kvpress_supports(built(a)[0])] == list(KVPRESS_ARCHS)


@pytest.mark.parametrize("arch", KVPRESS_ARCHS)
def test_kv_engine_text_equals_kvpress_pipeline(arch):
    "labnb.kv_engines' in-process engine and kvpress's own pipeline give the same text under a press."
    from kvpress import KVPressTextGenerationPipeline
    from labnb.kv_engines import GenRequest, TransformersEngine, compression_ratio, make_press
    m, tok, s, x = built(arch)
    eng = TransformersEngine(m, tok, model_name=f"tiny-{arch}")
    c = "The key is 4721. " + "Grass is green and the sky is blue. " * 3
    req = GenRequest(c, "What is the key?", "Answer:", press="knorm", budget=0.5, max_new_tokens=6)
    mine = eng.generate(req)
    assert mine.error_type is None, mine.error
    press = make_press("knorm", compression_ratio("ratio", 0.5, eng.encode(req)[0].shape[1]))
    ref = KVPressTextGenerationPipeline(model=m, tokenizer=tok)(c, question="What is the key?", answer_prefix="Answer:",
                                                                press=press, max_new_tokens=6)["answer"]
    assert mine.text == ref and mine.completion_tokens >= 1


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_functional_lora_equals_peft_merged(arch):
    "The architecture's default targets (q_proj/v_proj, qkv_proj, query_key_value, c_attn, query/value, Wqkv)."
    from labnb.lora import LoraSpec, default_lora_modules, functional_lora, lora_layout, peft_model_of, random_lora
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
