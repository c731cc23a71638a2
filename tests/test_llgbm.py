"""End-to-end checks of LLGBM on the tiny model: functional LoRA equals peft, gradients reach a generator, the delta cache
round-trips, deltas follow the adapter weights, configs round-trip with a stable hash, and the CLI rejects bad input."""
import subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from labnb.models import tiny_model
from labnb.store import ArrayCache
from labnb.lora import LoraSpec, lora_layout, random_lora, init_lora, functional_lora, unflatten_lora, peft_model_of, lora_from_peft
from labnb.deltas import ProbeConfig, DeltaConfig, probe_set, compute_deltas, delta_activations, base_states
from labnb.llgbm import make_config, save_config, read_config, PRESETS
from labnb.llgbm_cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model("llama", seed=0)
    for p in model.parameters(): p.requires_grad_(False)
    spec = LoraSpec(rank=3, alpha=6.0, layers=[0, 1])
    return model, tok, spec, lora_layout(model, spec)


def test_functional_lora_equals_peft(tiny):
    model, tok, spec, lay = tiny
    lora = random_lora(lay, seed=3, std=0.2)
    ids = torch.randint(4, 250, (3, 11))
    with torch.no_grad():
        ours = functional_lora(model, lora, spec.scale, input_ids=ids).logits
        pm = peft_model_of(model, spec, lora)
        theirs = pm(input_ids=ids).logits
        merged = pm.merge_and_unload()(input_ids=ids).logits
        base = model(input_ids=ids).logits
    assert (ours - base).abs().max() > 1e-2            # the adapter changes the output
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours, merged, atol=1e-5, rtol=1e-4)
    back = lora_from_peft(peft_model_of(model, spec, lora))
    assert all(torch.equal(back[n][0], lora[n][0]) and torch.equal(back[n][1], lora[n][1]) for n in lay.names)


def test_gradients_reach_generator_not_base(tiny):
    model, tok, spec, lay = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, lay.n_params))
    probes = probe_set(ProbeConfig())
    d = delta_activations(model, tok, probes, DeltaConfig(), unflatten_lora(gen(torch.ones(5)), lay), spec.scale)
    d.pow(2).sum().backward()
    assert gen[0].weight.grad is not None and gen[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # no mutation


def test_delta_cache_round_trip(tiny, tmp_path):
    model, tok, spec, lay = tiny
    probes, cfg, cache = probe_set(ProbeConfig()), DeltaConfig(), ArrayCache(tmp_path)
    ads = {"a": random_lora(lay, 1), "b": random_lora(lay, 2)}
    r1 = compute_deltas(model, tok, ads, spec.scale, probes, cfg, cache, progress=False)
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 3                                   # base states once + one per adapter
    r2 = compute_deltas(model, tok, ads, spec.scale, probes, cfg, cache, progress=False)
    np.testing.assert_array_equal(r1["per_probe"], r2["per_probe"])
    assert sorted(p.name for p in tmp_path.iterdir()) == entries
    # a corrupt entry is recomputed to the same values
    delta_entry = next(p for p in tmp_path.iterdir() if "delta" in p.name)
    (delta_entry / "per_probe.npy").write_bytes(b"garbage")
    r3 = compute_deltas(model, tok, ads, spec.scale, probes, cfg, cache, progress=False)
    np.testing.assert_allclose(r3["per_probe"], r1["per_probe"], atol=1e-6)
    # the cached delta is the delta
    with torch.no_grad():
        direct = delta_activations(model, tok, probes, cfg, ads["a"], spec.scale)
    np.testing.assert_allclose(r1["deltas"][0], direct.numpy(), atol=1e-5)


def test_delta_changes_with_lora_weights(tiny, tmp_path):
    model, tok, spec, lay = tiny
    probes, cfg = probe_set(ProbeConfig()), DeltaConfig()
    base = base_states(model, tok, probes, cfg)
    with torch.no_grad():
        zero = delta_activations(model, tok, probes, cfg, init_lora(lay), spec.scale, base)
        lora = random_lora(lay, 5)
        d1 = delta_activations(model, tok, probes, cfg, lora, spec.scale, base)
        lora2 = {n: (A, B * 1.5) for n, (A, B) in lora.items()}
        d2 = delta_activations(model, tok, probes, cfg, lora2, spec.scale, base)
    assert zero.abs().max() < 1e-5
    assert (d1 - d2).norm() > 1e-3 * d1.norm()
    r = compute_deltas(model, tok, {"x": lora, "y": lora2}, spec.scale, probes, cfg, ArrayCache(tmp_path), progress=False)
    assert not np.allclose(r["deltas"][0], r["deltas"][1])


def test_config_round_trip_and_hash(tmp_path):
    for preset in PRESETS:
        cfg = make_config(preset, ROOT / "configs" / "llgbm" / "smoke.yaml", ["train.steps=9"])
        save_config(cfg, tmp_path / f"{preset}.yaml")
        back = read_config(tmp_path / f"{preset}.yaml")
        assert back == cfg and back.config_hash() == cfg.config_hash()
    hashes = {p: make_config(p).config_hash() for p in PRESETS}
    assert len(set(hashes.values())) == len(PRESETS)
    code = "from labnb.llgbm import make_config, PRESETS; print(*[make_config(p).config_hash() for p in PRESETS])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.stdout.split() == list(hashes.values())        # stable across processes


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert cli(["nonsense"]) == 2
    assert cli(["train", str(tmp_path / "r"), "--preset", "bogus"]) == 2
    assert "preset" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("lora:\n  rank: two\n")
    assert cli(["compute-deltas", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "lora.rank" in err and "c.yaml" in err
    assert cli(["verify", str(tmp_path / "missing")]) == 2
