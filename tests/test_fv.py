"End-to-end checks of the function-vector workflow on tiny random models (seconds)."
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from labnb.core import ConfigError
from labnb.data import DataError

from labnb.models import tiny_model, model_spec
from labnb.hooks import hook_module, head_weight
from labnb.fv.core import (PromptFormat, sample_trials, encode, answer_token, score_prompts, score_injected, indirect_effects,
                      patched_probs, read_relation_csv, PATCH_METHODS, corrupted_prompt, all_heads)
from labnb.fv.qwise import (FVConfig, run_fv_qwise, q_dir, artifacts_dir, layer_files, stage_files, status_table, SUMMARY_FILE,
                            qid_complete, run_diffs,
                            result_diffs, run_summary, qid_statuses)

torch.set_num_threads(1)          # results compared across processes: one thread in every process (see run_diffs)

WORDS = [("hot", "cold"), ("up", "down"), ("big", "small"), ("wet", "dry"), ("old", "new"), ("in", "out"), ("fast", "slow")]

def relation(extra_short: bool = True) -> pd.DataFrame:
    rows = [{"q_id": "ant", "input": a, "output": b} for a, b in WORDS]
    if extra_short: rows += [{"q_id": "few", "input": "a", "output": "b"}, {"q_id": "few", "input": "c", "output": "d"}]
    return pd.DataFrame(rows)

CFG = FVConfig(n_demos=3, n_trials=3, top_k=3, alphas=[1.0, 4.0], n_boot=5)

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batched_equals_sequential_indirect_effects(arch):
    model, tok = tiny_model(arch, seed=2)
    spec = model_spec(model)
    fmt = PromptFormat()
    trials = sample_trials(relation(False), n_trials=2, n_demos=3, seed=0)
    torch.manual_seed(0)
    mean = torch.randn(spec.n_layers, spec.n_heads, spec.d_head) * 2
    ref, _ = indirect_effects(model, spec, tok, trials, fmt, mean, "sequential", progress=False)
    for method in ("batched", "prefix", "suffix"):
        got, _ = indirect_effects(model, spec, tok, trials, fmt, mean, method, batch_size=3, progress=False)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert ref.abs().max() > 1e-5                       # patching does something: the check can fail

@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2", "gpt2", "falcon"])   # falcon: the per-row prefix copy
def test_suffix_patching_equals_one_pass_per_head(arch):
    "All heads (GQA llama; gemma3 with a sliding window shorter than the prompt), batches of several sizes, to 1e-6."
    model, tok = tiny_model(arch, seed=3)
    spec = model_spec(model)
    torch.manual_seed(1)
    mean = torch.randn(spec.n_layers, spec.n_heads, spec.d_head) * 3
    trial = sample_trials(relation(False), n_trials=1, n_demos=4, seed=1)[0]
    ids = encode(tok, corrupted_prompt(trial, PromptFormat()))
    target = answer_token(tok, trial["query"]["output"], PromptFormat())
    ref = patched_probs(model, spec, ids, target, mean, "sequential")
    for bs in (1, 3, 64):
        torch.testing.assert_close(patched_probs(model, spec, ids, target, mean, "suffix", batch_size=bs), ref, atol=1e-6, rtol=0)
    sel = torch.tensor([5, 0, 2])                                       # any subset, any order
    l, h = all_heads(spec)
    torch.testing.assert_close(patched_probs(model, spec, ids, target, mean, "suffix", layers=l[sel], heads=h[sel]), ref[sel],
                               atol=1e-6, rtol=0)
    assert len(spec.blocks(model)) == spec.n_layers and (ref - ref.mean()).abs().max() > 1e-6

def test_head_slices_are_gqa_correct():
    "Per-query-head contributions through o_proj slices add up to the o_proj output (4 query heads, 2 KV heads)."
    model, tok = tiny_model("llama")
    spec = model_spec(model)
    assert spec.n_kv_heads < spec.n_heads
    seen = {}
    proj = spec.attn_out_proj(model, 1)
    def grab(mod, args, out): seen["in"], seen["out"] = args[0], out
    with hook_module(proj, grab), torch.no_grad(): model(input_ids=torch.tensor([encode(tok, "Q: up\nA: down")]))
    z = seen["in"].view(*seen["in"].shape[:2], spec.n_heads, spec.d_head)
    total = sum(z[..., h, :] @ head_weight(proj, h, spec.d_head) for h in range(spec.n_heads))
    bias = proj.bias if proj.bias is not None else 0
    torch.testing.assert_close(total + bias, seen["out"], atol=1e-5, rtol=1e-5)

def test_no_query_demo_overlap_and_seeded():
    df = pd.DataFrame({"q_id": "t", "input": [f"w{i}" for i in range(15)], "output": [f"v{i}" for i in range(15)]})
    for seed in range(20):
        for t in sample_trials(df, 25, 9, seed):
            rows = [d["row"] for d in t["demos"]]
            assert t["query"]["row"] not in rows and len(set(rows)) == 9
    assert sample_trials(df, 5, 9, 3) == sample_trials(df, 5, 9, 3)

def test_zero_vector_changes_nothing():
    model, tok = tiny_model("llama")
    spec = model_spec(model)
    ids = [encode(tok, "Q: big\nA:"), encode(tok, "Q: fast\nA:")]
    tg = [answer_token(tok, "small", PromptFormat())] * 2
    base = score_prompts(model, spec, ids, tg)
    for layer in range(spec.n_layers):
        torch.testing.assert_close(score_prompts(model, spec, ids, tg, layer=layer, vectors=torch.zeros(2, spec.d_model))["p"],
                                   base["p"], atol=0, rtol=0)
        inj = score_injected(model, spec, ids[0], tg[0], [layer], torch.zeros(1, spec.d_model))
        torch.testing.assert_close(inj["p"], base["p"][:1], atol=1e-6, rtol=0)

def test_skip_rule_and_status(tmp_path):
    model, tok = tiny_model("llama")
    st = run_fv_qwise(model, tok, relation(), tmp_path, CFG, progress=False)
    assert st["few"]["status"] == "skipped" and "2 rows < n_demos + 1 = 4" in st["few"]["reason"]
    assert st["ant"]["status"] == "completed"
    disk = json.loads((tmp_path / "qid_status.json").read_text())
    assert disk["few"]["status"] == "skipped" and disk["ant"]["status"] == "completed"
    for q in ("ant", "few"):                                          # the per-q_id export
        assert json.loads((q_dir(tmp_path, q) / "qid_status.json").read_text())["status"] == st[q]["status"]
    assert qid_complete(q_dir(tmp_path, "ant"), model_spec(model).n_layers)

def test_status_table_is_the_source(tmp_path):
    "qid_status.json is an export: summaries and resumes read the status table, whatever the json says."
    model, tok = tiny_model("llama")
    run_fv_qwise(model, tok, relation(), tmp_path, CFG, progress=False)
    want = run_summary(tmp_path)
    assert set(want.q_id) == {"ant"}
    (tmp_path / "qid_status.json").write_text(json.dumps({"few": {"status": "completed"}}))    # a stale or edited export
    (q_dir(tmp_path, "ant") / "qid_status.json").unlink()
    pd.testing.assert_frame_equal(run_summary(tmp_path), want)
    assert qid_statuses(tmp_path)["ant"]["status"] == "completed" and qid_statuses(tmp_path)["few"]["status"] == "skipped"
    run_fv_qwise(model, tok, relation(), tmp_path, CFG, progress=False)                     # nothing to do: exports rewritten
    assert json.loads((tmp_path / "qid_status.json").read_text())["ant"]["status"] == "completed"
    assert json.loads((q_dir(tmp_path, "ant") / "qid_status.json").read_text())["status"] == "completed"

BAD_RELATIONS = {                     # file text, the line and the field the one-line error must name
    "header_only": ("q_id,input,output\n", "line 2", None),
    "empty": ("", "line 1", None),
    "ragged": ("q_id,input,output\nant,hot,cold\nant,up,down,x\n", "line 3", None),
    "missing_column": ("q_id,input,answer\nant,hot,cold\n", "line 1", "output"),
    "empty_cell": ("q_id,input,output\nant,hot,cold\n\nant,up, \n", "line 4", "output"),
    "duplicate_column": ("q_id,input,output,output\nant,hot,cold,x\n", "line 1", "output"),
}

@pytest.mark.parametrize("name", BAD_RELATIONS)
def test_bad_relation_file(tmp_path, name):
    text, line, field = BAD_RELATIONS[name]
    f = tmp_path / f"{name}.csv"; f.write_text(text)
    model, tok = tiny_model("llama")
    with pytest.raises(DataError) as e: run_fv_qwise(model, tok, f, tmp_path / "out", CFG, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"{name}.csv, {line}" in msg and (field is None or f"field '{field}'" in msg), msg
    assert not (tmp_path / "out").exists()                          # nothing written

def test_bad_relation_dataframe(tmp_path):
    model, tok = tiny_model("llama")
    for df, want in ((pd.DataFrame(), "field 'q_id': missing column"), (relation(False).head(0), "no rows"),
                     (relation(False).assign(output=["x"] * 6 + [None]), "row 6, field 'output': empty value")):
        with pytest.raises(DataError, match=want): run_fv_qwise(model, tok, df, tmp_path / "out", CFG, progress=False)
    with pytest.raises(ConfigError, match="q_ids"): run_fv_qwise(model, tok, relation(), tmp_path / "o", CFG, q_ids=["x"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()

def test_empty_relation_source(tmp_path, monkeypatch):
    "A source without rows makes no relation file: one DataError naming the source (once an AttributeError)."
    import labnb.fv.core as fv
    monkeypatch.setitem(fv.RELATION_SOURCES, "empty", lambda name: [])
    with pytest.raises(DataError, match="empty/none: no rows .* q_id 'x'"):
        fv.build_relation_csv({"x": "empty/none"}, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())

def test_template_reports_bad_relation_file(tmp_path, capsys):
    "`labnb run fv_qwise -p relation_file F` with a header-only file fails, its first error line naming file and line."
    from labnb.cli import main
    from labnb.runner import scratch_home
    f = tmp_path / "header_only.csv"; f.write_text("q_id,input,output\n")
    with scratch_home(("fv_qwise",)) as h:
        rc = main(["run", "fv_qwise", "-q", "-p", "relation_file", str(f)])
        assert not list((h / "results" / "fv_qwise").rglob("metrics.json"))
    err = capsys.readouterr().err
    assert rc != 0 and "header_only.csv, line 2: no rows" in err.splitlines()[0], err

KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys, pandas as pd, torch
    torch.set_num_threads(1)
    import labnb.fv.qwise as fq
    from labnb.models import tiny_model
    out, kill = sys.argv[1], sys.argv[2] == "kill"
    orig = fq.eval_layer
    def eval_layer(r, layer, *a, **k):
        if kill and layer == 1: os.kill(os.getpid(), signal.SIGKILL)   # killed mid-Step6, after layer 0 is on disk
        return orig(r, layer, *a, **k)
    fq.eval_layer = eval_layer
    words = {WORDS!r}
    rel = pd.DataFrame([{{"q_id": "ant", "input": a, "output": b}} for a, b in words])
    model, tok = tiny_model("llama")
    cfg = fq.FVConfig(**{CFG!r})
    fq.run_fv_qwise(model, tok, rel, out, cfg, progress=False)
''').format(WORDS=WORDS, CFG=CFG.to_dict())

def _run(script: Path, out: Path, mode: str):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), str(out), mode], env=env, capture_output=True, text=True, timeout=300)

def test_resume_after_kill_mid_step6(tmp_path):
    script = tmp_path / "run.py"; script.write_text(KILL_SCRIPT)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    p = _run(script, killed, "kill")
    assert p.returncode == -signal.SIGKILL, p.stderr
    qd, art = q_dir(killed, "ant"), artifacts_dir(killed, "ant")
    assert all((art / f).exists() for f in layer_files("ant", 0)) and not (art / layer_files("ant", 1)[0]).exists()
    status = json.loads((killed / "qid_status.json").read_text())
    assert status["ant"]["status"] == "running"
    before = {p: p.stat().st_mtime_ns for p in qd.rglob("*")         # completed work; the status export changes
              if p.is_file() and "logs" not in p.parts and p.name != "qid_status.json"}
    p = _run(script, killed, "resume"); assert p.returncode == 0, p.stderr
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before                                                  # nothing completed was recomputed
    assert json.loads((killed / "qid_status.json").read_text())["ant"]["status"] == "completed"
    model, tok = tiny_model("llama")                                       # an uninterrupted run for comparison
    run_fv_qwise(model, tok, relation(False), clean, CFG, progress=False)
    assert run_diffs(killed, clean) == []            # every result file: floats within RESULT_RTOL, the rest exact

def test_same_results_tolerance():
    "Floats of two processes may differ in the last bits; anything else, or a larger float difference, is a difference."
    assert result_diffs({"clean_p": 0.003802472880731026}, {"clean_p": 0.0038024730359514556}) == []
    assert len(result_diffs({"clean_p": 0.0038}, {"clean_p": 0.00381})) == 1
    assert len(result_diffs({"acc": 1.0, "top1": [True], "best_layer": 3}, {"acc": 0.5, "top1": [False], "best_layer": 4})) == 3


class _Killed(BaseException): "Stops a run the way a kill does: no handler of the pipeline catches it."

def _completed_files(out: Path, q: str) -> dict:
    "Time stamps of the files of every stage the status table records as completed."
    if not (out / "status.sqlite").exists(): return {}                 # stopped before the first record
    files = {**stage_files(q), **{f"step6/layer_{l}": layer_files(q, l) for l in range(8)}, "summary": (SUMMARY_FILE,)}
    done = [r.unit.split("/", 1)[1] for r in status_table(out, table="stages").rows(status="completed")]
    return {f: (artifacts_dir(out, q) / f).stat().st_mtime_ns for u in done for f in files[u]}

@pytest.mark.parametrize("kill_at", [1, 4, 9, 15, 18, 24])   # meta, StepD, StepE, zero-shot, a layer, the summary
def test_kill_at_any_write_then_resume(tmp_path, monkeypatch, kill_at):
    "Stopped at the k-th file write of a q_id, then resumed: the same final files; no completed stage runs again."
    import labnb.fv.qwise as fq
    model, tok = tiny_model("llama")
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_fv_qwise(model, tok, relation(False), ref, CFG, progress=False)
    real, n = fq.save, [0]
    def save(path, obj):
        n[0] += 1
        if n[0] == kill_at: raise _Killed(str(path))
        return real(path, obj)
    monkeypatch.setattr(fq, "save", save)
    with pytest.raises(_Killed): run_fv_qwise(model, tok, relation(False), out, CFG, progress=False)
    monkeypatch.setattr(fq, "save", real)
    before = _completed_files(out, "ant")
    assert run_fv_qwise(model, tok, relation(False), out, CFG, progress=False)["ant"]["status"] == "completed"
    assert {f: (artifacts_dir(out, "ant") / f).stat().st_mtime_ns for f in before} == before
    assert run_diffs(out, ref) == []


def test_spec_contract(tmp_path, monkeypatch):
    "The design document's constants, prompt, file names, and Step6 reading its frozen zero-shot prompts."
    import labnb.fv.qwise as fq
    from labnb.fv.core import zeroshot_prompt
    assert (fq.N_DEMOS, fq.TOPK, fq.ALPHA, fq.N_TRIALS_PER_Q, fq.N_EVAL, fq.SEED, fq.SCORE_KEY) == (9, 20, 1.0, 25, 50, 0, "mean_delta_p")
    assert fq.INPUT_CSV == "datasets/relation/relationA_ex.csv"
    spec = FVConfig.preset("spec")
    assert (spec.n_demos, spec.top_k, spec.alphas, spec.n_trials, spec.n_eval, spec.seed) == (9, 20, [1.0], 25, 50, 0)
    assert zeroshot_prompt({"query": {"input": "France"}}, spec.prompt) == "Q: France\nA: "
    words = [(f"w{i}", f"v{i}") for i in range(12)]
    rel = pd.DataFrame([{"q_id": "a/b", "input": a, "output": b} for a, b in words])
    reads, in_step6, real_read, real_step6 = [], [False], fq.read_json, fq.stage_step6
    monkeypatch.setattr(fq, "read_json", lambda f: (reads.append(Path(f).name) if in_step6[0] else None) or real_read(f))
    def step6(r):
        in_step6[0] = True
        try: return real_step6(r)
        finally: in_step6[0] = False
    monkeypatch.setattr(fq, "stage_step6", step6)
    model, tok = tiny_model("llama")
    cfg = FVConfig.preset("smoke", n_eval=5)
    run_fv_qwise(model, tok, rel, tmp_path, cfg, progress=False)
    qd, art, tag = q_dir(tmp_path, "a/b"), artifacts_dir(tmp_path, "a/b"), "a_b"
    assert qd.name == "q_a_b" and (qd / "qid_status.json").is_file() and (qd / "logs" / "stepD_aie.log").is_file()
    for f in ["sampled_trials.json", "sampled_trials_zeroshot.json", "cie_scores.csv", "aie_scores.csv", "trial_metrics.jsonl",
              f"stepD_mean_acts/qid_{tag}_clean_mean.pt", "stepD_mean_acts/global_clean_mean.pt", "top_heads.json",
              "fv_by_layer.pt", "fv_global_resid.pt", "fv_global_resid_meta.json", "stepE_eval.json", f"aie_heatmap_{tag}.png",
              "step6_all_layers_summary.json"] + [f"step6/layer_{l}/{n}" for l in (0, 1) for n in
              (f"step6_results_{tag}_layer{l}.json", "eval_summary.json", "eval_trials.jsonl", "eval_meta.json")]:
        assert (art / f).is_file(), f
    assert "mean_delta_p" in pd.read_csv(art / "aie_scores.csv").columns
    zs, trials = json.loads((art / "sampled_trials_zeroshot.json").read_text()), json.loads((art / "sampled_trials.json").read_text())
    rows = [p["row"] for p in zs["prompts"]]
    assert len(rows) == 5 and zs["disjoint_from_trials"] and not set(rows) & {t["query"]["row"] for t in trials["trials"]}
    assert all(p["prompt"].endswith("\nA: ") for p in zs["prompts"])
    meta = json.loads((art / "step6/layer_1/eval_meta.json").read_text())
    assert meta["n_prompts"] == 5 and meta["disjoint_from_trials"] and meta["prompts_from"] == "sampled_trials_zeroshot.json"
    assert "sampled_trials_zeroshot.json" in reads                          # Step6 reads its prompts back from the file
    class NoSpec(torch.nn.Module):                                      # an architecture without a ModelSpec
        def __init__(self): super().__init__(); self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    assert fq.expected_layers(NoSpec()) == [0, 1, 2] and fq.expected_layers(model) == [0, 1]


def test_suffix_patching_survives_a_library_that_wraps_attention_functions():
    "kvpress wraps every registered attention function when imported; the FV fast path must not run through its wrapper."
    import subprocess, sys
    code = """import torch
from labnb.models import tiny_model, model_spec
from labnb.fv.core import patched_probs
m, t = tiny_model("llama"); spec = model_spec(m)
ids = list(range(5, 25)); mean = torch.randn(spec.n_layers, spec.n_heads, spec.d_head, generator=torch.Generator().manual_seed(0))
a = patched_probs(m, spec, ids, 7, mean, method="suffix")
import kvpress
b = patched_probs(m, spec, ids, 7, mean, method="suffix"); c = patched_probs(m, spec, ids, 7, mean, method="sequential")
assert torch.allclose(a, b) and (b - c).abs().max() < 1e-6, (a, b, c)"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_run_logged_at_info_level_completes(tmp_path, caplog):
    "Every log call of a run formats with its arguments (a run whose logger is at INFO must not fail on a log line)."
    import logging
    caplog.set_level(logging.DEBUG, logger="labnb")
    model, tok = tiny_model("llama")
    st = run_fv_qwise(model, tok, relation(), tmp_path, CFG, progress=False)
    assert st["ant"]["status"] == "completed", st["ant"]
    assert any("clean ICL accuracy" in r.getMessage() for r in caplog.records)
