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
from labnb.llgbm.lora import LoraSpec, lora_layout, random_lora, init_lora, functional_lora, unflatten_lora, peft_model_of, lora_from_peft
from labnb.llgbm.deltas import ProbeConfig, DeltaConfig, probe_set, compute_deltas, delta_activations, base_states
from labnb.llgbm.core import make_config, save_config, read_config, PRESETS
from labnb.llgbm.cli import main as cli

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
    code = "from labnb.llgbm.core import make_config, PRESETS; print(*[make_config(p).config_hash() for p in PRESETS])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.stdout.split() == list(hashes.values())        # stable across processes


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert cli(["nonsense"]) == 2
    assert cli(["train", str(tmp_path / "r"), "--config", "bogus"]) == 2
    assert "preset" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("lora:\n  rank: two\n")
    assert cli(["compute-deltas", "--config-file", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "lora.rank" in err and "c.yaml" in err
    assert cli(["reproduce", str(tmp_path / "missing")]) == 2


# --- bad input, resumability, the CLI of the design document, training options, probes ---------------------------
import json, os, signal, time

import pandas as pd

from labnb.llgbm.deltas import PROBES, AGGREGATES
from labnb.store import StatusTable

SMOKE = str(ROOT / "configs" / "llgbm" / "smoke.yaml")


def _run(capsys, *argv):
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words: assert w in lines[0], (w, lines[0])


def test_bad_config_values_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LABNB_HOME", str(tmp_path))
    rd = tmp_path / "run"
    # `tasks: {}` would merge away and keep the tasks of the file below: an error naming the file (or the overrides)
    (tmp_path / "empty.yaml").write_text("tasks: {}\n")
    code, _, err = _run(capsys, "train", str(rd), "--config-file", SMOKE, "--config-file", str(tmp_path / "empty.yaml"))
    assert code == 2; _one_line_error(err, "tasks", "empty.yaml")
    code, _, err = _run(capsys, "train", str(rd), "--config-file", SMOKE, "-s", "tasks={}")
    assert code == 2; _one_line_error(err, "tasks", "overrides")
    # wrong type, unknown key, unknown preset: the dotted key and the file that set it (not merely the last file)
    (tmp_path / "ok.yaml").write_text("name: fine\n")
    cases = {"type.yaml": ("generator:\n  hidden: wide\n", "generator.hidden"),
             "key.yaml": ("train:\n  stesp: 3\n", "train.stesp"),
             "preset.yaml": ("preset: delta_everything\n", "preset"),
             "range.yaml": ("train:\n  save_interval: 0\n", "train.save_interval"),
             "task.yaml": ("tasks:\n  fv/no_such_task: x\n", "tasks.fv/no_such_task")}
    for name, (text, key) in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = _run(capsys, "train", str(rd), "--config-file", SMOKE, "--config-file", str(tmp_path / name),
                            "--config-file", str(tmp_path / "ok.yaml"))
        assert code == 2, name; _one_line_error(err, key, name)
    (tmp_path / "broken.yaml").write_text("train:\n  steps: [1,\n")
    code, _, err = _run(capsys, "train", str(rd), "--config-file", str(tmp_path / "broken.yaml"))
    assert code == 2; _one_line_error(err, "broken.yaml", "invalid YAML")
    code, _, err = _run(capsys, "train", str(rd), "--config", "delta_everything")
    assert code == 2; _one_line_error(err, "preset")
    assert not rd.exists() and not (tmp_path / ".cache").exists()


def test_empty_task_data_names_file_and_key(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    (data / "function_vectors/dataset_files/abstractive").mkdir(parents=True)
    (data / "function_vectors/dataset_files/abstractive/antonym.json").write_text("[]")
    monkeypatch.setenv("LABNB_HOME", str(tmp_path)); monkeypatch.setenv("LABNB_DATA", str(data)); monkeypatch.setenv("LABNB_OFFLINE", "1")
    code, _, err = _run(capsys, "train", str(tmp_path / "run"), "--config-file", SMOKE, "-s", "tasks={fv/antonym: linguistic}",
                        "-s", "heldout=[]", "--quiet")
    assert code == 2; _one_line_error(err, "antonym.json", "tasks.fv/antonym")
    assert "max()" not in err and not (tmp_path / "run").exists() and not (tmp_path / ".cache").exists()
    (data / "function_vectors/dataset_files/abstractive/antonym.json").write_text('[{"input": "a", "output": "b"},\n {"input": "c", "output": "d"}]')
    code, _, err = _run(capsys, "train", str(tmp_path / "run"), "--config-file", SMOKE, "-s", "tasks={fv/antonym: linguistic}",
                        "-s", "heldout=[]", "--quiet")
    assert code == 2; _one_line_error(err, "antonym.json", "tasks.fv/antonym", "2 input/output pairs")
    assert not (tmp_path / "run").exists() and not (tmp_path / ".cache").exists()


_CLI = "import sys; from labnb.llgbm.cli import main; sys.exit(main(sys.argv[1:]))"


def _start(args, env):
    return subprocess.Popen([sys.executable, "-c", _CLI, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc, cond, timeout=120):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() - t0 < timeout, "timed out waiting for the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()


def test_sigkill_teachers_deltas_generator_resume(tmp_path, monkeypatch):
    "SIGKILL during teacher training, then during generator training: no finished unit is redone and the final weights equal an uninterrupted run's."
    from labnb.llgbm.core import make_config, teacher_root, train_run, load_generator, setup
    env = {**os.environ, "LABNB_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    over = ["teacher.steps=20", "train.steps=12", "train.save_interval=2"]
    args = ["train", str(tmp_path / "run"), "--config-file", SMOKE, *sum([["-s", o] for o in over], []), "--quiet"]
    monkeypatch.setenv("LABNB_HOME", str(tmp_path))
    cfg = make_config(None, SMOKE, over)
    root = teacher_root(cfg)
    manifests = lambda: sorted(root.glob("*/manifest.json"))
    p = _start(args, env)                                        # 1. killed once the first teacher is saved
    _kill_when(p, lambda: len(manifests()) >= 1)
    first = {m: m.stat().st_mtime_ns for m in manifests()}
    p = _start(args, env)                                        # 2. killed once a generator checkpoint exists
    _kill_when(p, lambda: (tmp_path / "run" / "generator.pt").exists())
    assert all(m.stat().st_mtime_ns == t for m, t in first.items())
    deltas = {e: (e / "manifest.json").stat().st_mtime_ns for e in (tmp_path / "embeddings").glob("llgbm-delta-*")}
    p = _start(args, env)                                        # 3. runs to the end
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    assert all(m.stat().st_mtime_ns == t for m, t in first.items())                    # finished teachers not retrained
    assert all((e / "manifest.json").stat().st_mtime_ns == t for e, t in deltas.items())   # cached deltas not recomputed
    rows = {r.unit: r for r in StatusTable(root / "status.sqlite").rows()}
    assert all(r.status == "completed" for r in rows.values()) and len(rows) == len(cfg.tasks)
    assert all(rows[json.loads((m.parent / "manifest.json").read_text())["task"]].attempts == 1 for m in first)
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(hist["step"]) == list(range(12))
    # the uninterrupted reference, in this process, from the same teachers
    torch.set_num_threads(1)
    ctx = setup(cfg)
    ref = train_run(cfg, tmp_path / "ref", ctx, progress=False)
    a, b = load_generator(ctx, tmp_path / "run").state_dict(), load_generator(ctx, tmp_path / "ref").state_dict()
    for k in a: torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(hist["total"], ref["total"], atol=1e-6, rtol=1e-5)


def test_cli_design_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LABNB_HOME", str(tmp_path)); monkeypatch.setenv("MPLBACKEND", "Agg")
    code, out, err = _run(capsys, "verify", "--config-file", SMOKE)
    assert code == 0 and "FAIL" not in out
    assert all(w in out for w in ("imports", "faiss", "peft", "model tiny-llama", "data fv/antonym", "OK"))
    with monkeypatch.context() as m:                      # a data mirror without the tasks: FAIL rows, exit 1
        m.setenv("LABNB_DATA", str(tmp_path / "nodata")); m.setenv("LABNB_OFFLINE", "1")
        code, out, _ = _run(capsys, "verify", "--config-file", SMOKE, "--no-models")
        assert code == 1 and out.count("FAIL") == 3
    rd = tmp_path / "run"
    code, out, _ = _run(capsys, "train", str(rd), "--config-file", SMOKE, "-s", "train.steps=3", "--quiet")
    assert code == 0 and json.loads(out)["preset"] == "delta_multi"
    assert _run(capsys, "evaluate", str(rd), "--quiet")[0] == 0
    code, out, _ = _run(capsys, "reproduce", str(rd), "--quiet")
    assert code == 0 and json.loads(out)["ok"]
    code, out, err = _run(capsys, "verify", str(rd), "--quiet")     # the former name: same result, with a note
    assert code == 0 and json.loads(out)["ok"] and "deprecated" in err and "reproduce" in err
    for kind, names in (("training", ["fig_training.png"]), ("deltas", ["fig_deltas.png"]),
                        ("composition", ["composition.csv", "fig_composition.png"])):
        code, out, _ = _run(capsys, "visualize", str(rd), "--type", kind, "--quiet")
        assert code == 0 and out.split() == [str(rd / n) for n in names]
        assert all((rd / n).stat().st_size > 0 for n in names)
    assert _run(capsys, "visualize", str(rd), "--type", "weights")[0] == 2
    cfgs = {}
    for v in ("b1", "b2"):
        code, out, _ = _run(capsys, "train-delta-only", str(tmp_path / v), "--config-file", SMOKE, "--variant", v, "-s", "train.steps=2", "--quiet")
        assert code == 0, v
        cfgs[v] = read_config(tmp_path / v / "config.yaml")
    assert cfgs["b1"].preset == cfgs["b2"].preset == "delta_only"
    assert (cfgs["b1"].train.weight_reg, cfgs["b2"].train.weight_reg) == (0.0, 0.1) and cfgs["b1"].train.weight_loss == 0.0
    assert pd.read_csv(tmp_path / "b2" / "history.csv")["weight_reg"].iloc[-1] > 0
    # --config is a preset name; the presets' configs differ only where the presets say
    assert make_config("baseline").train.delta_loss == 0 and make_config().preset == "delta_multi"


def test_training_warmup_clipping_eval_and_save_interval(tiny, tmp_path, monkeypatch):
    from labnb.llgbm.core import setup, ensure_teachers, teacher_data, task_embeddings, train_generator
    monkeypatch.setenv("LABNB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    cfg = make_config("delta_multi", SMOKE, ["train.steps=5", "train.warmup_steps=4", "train.max_grad_norm=0.000001",
                                            "train.eval_interval=2", "train.save_interval=2"])
    ctx = setup(cfg)
    td, emb = teacher_data(ctx, ensure_teachers(ctx, progress=False)), task_embeddings(cfg)
    seen, saved = [], []
    step = torch.optim.AdamW.step
    def spy(self, *a, **k):
        seen.append((self.param_groups[0]["lr"], float(torch.sqrt(sum(p.grad.pow(2).sum() for p in self.param_groups[0]["params"] if p.grad is not None)))))
        return step(self, *a, **k)
    import labnb.llgbm.core as L
    save = L._save_checkpoint
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    monkeypatch.setattr(L, "_save_checkpoint", lambda path, gen, opt, rng, history, evals, s, c: (saved.append(s), save(path, gen, opt, rng, history, evals, s, c)))
    _, hist = train_generator(ctx, td, emb, tmp_path / "run", progress=False)
    lr = cfg.train.lr
    np.testing.assert_allclose([s[0] for s in seen], [lr / 4, lr / 2, 3 * lr / 4, lr, lr])          # warm-up
    assert all(n <= 1e-6 * (1 + 1e-3) for _, n in seen) and (hist["grad_norm"] > 1e-6).all()      # clipped; norm before clipping logged
    assert saved == [2, 4, 5]                                                                      # save_interval and the last step
    ev = pd.read_csv(tmp_path / "run" / "eval_history.csv")
    assert sorted(ev["step"].unique()) == [2, 4, 5] and set(ev["task"]) == set(cfg.tasks)
    assert set(ev["split"]) == {"train", "heldout"} and np.isfinite(ev[["weight_loss", "delta_loss"]].values).all()


def test_probes_five_per_domain_and_aggregates(tiny, tmp_path):
    model, tok, spec, lay = tiny
    assert {k: len(v) for k, v in PROBES.items()} == {"generic": 5, "math": 5, "code": 5, "commonsense": 5}
    assert all(t.startswith("Below is an instruction") and "\n### Instruction:\n" in t and t.endswith("\n\n### Response:")
               for t in PROBES["generic"])
    probes = probe_set(ProbeConfig())
    r = {a: compute_deltas(model, tok, {"x": random_lora(lay, 1)}, spec.scale, probes, DeltaConfig(aggregate=a), ArrayCache(tmp_path),
                           progress=False) for a in ("mean", "max", "concat")}
    pp = torch.from_numpy(np.asarray(r["mean"]["per_probe"]))          # [1, 20, d]
    np.testing.assert_allclose(r["mean"]["deltas"], pp.mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(r["max"]["deltas"], pp.max(1).values.numpy(), rtol=1e-6)
    assert r["concat"]["deltas"].shape == (1, len(probes) * pp.shape[-1])
    assert not np.allclose(r["max"]["deltas"], r["mean"]["deltas"])
    assert make_config(overrides=["delta.aggregate=max"]).delta.aggregate == "max"
    with pytest.raises(Exception, match="delta.aggregate"): make_config(overrides=["delta.aggregate=median"])


def test_two_processes_one_run_folder(tmp_path, monkeypatch):
    "Two `train` processes on one run folder and one teacher folder: each teacher and each generator step is trained once."
    from labnb.llgbm.core import make_config, teacher_root
    monkeypatch.setenv("LABNB_HOME", str(tmp_path))
    env = {**os.environ, "LABNB_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    over = ["teacher.steps=10", "train.steps=8", "train.save_interval=2"]
    args = ["train", str(tmp_path / "run"), "--config-file", SMOKE, *sum([["-s", o] for o in over], []), "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-c", _CLI, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode()[-2000:] for _, e in outs]
    assert sorted(json.loads(o)["steps_run"] for o, _ in outs) == [0, 8]
    assert list(pd.read_csv(tmp_path / "run" / "history.csv")["step"]) == list(range(8))
    cfg = make_config(None, SMOKE, over)
    rows = StatusTable(teacher_root(cfg) / "status.sqlite").rows()
    assert len(rows) == len(cfg.tasks) and all(r.status == "completed" and r.attempts == 1 for r in rows)
