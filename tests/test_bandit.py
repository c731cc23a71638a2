"End-to-end checks of the layer-bandit workflow: metric known cases, LinUCB regret, resume after a kill, loud missing baseline."
import math, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest
import torch

from labnb.bandit.metrics import metric_value, all_layer_metrics
from labnb.bandit.core import BanditConfig, EventLog, run_bandit, run_synthetic, synthetic_problem
from labnb.bandit.rewards import ArmRewards, MissingBaseline, RewardConfig, zscores


def test_metric_known_cases():
    g = torch.Generator().manual_seed(1)
    rank1 = torch.randn(300, 1, generator=g) * torch.randn(1, 24, generator=g)
    iso = torch.randn(30000, 6, generator=g)
    assert metric_value("dataset_entropy", rank1).value == pytest.approx(0.0, abs=1e-6)
    assert metric_value("effective_rank", rank1).value == pytest.approx(1.0, abs=1e-4)
    assert metric_value("anisotropy", rank1).value == pytest.approx(1.0, abs=1e-9)
    assert metric_value("dataset_entropy", iso).value == pytest.approx(1.0, abs=2e-3)
    assert metric_value("effective_rank", iso).value == pytest.approx(6.0, abs=0.05)
    assert metric_value("anisotropy", iso).value == pytest.approx(1 / 6, abs=0.01)
    assert metric_value("mean_cosine", iso).value == pytest.approx(0.0, abs=0.01)
    assert metric_value("logdet_cov", 3 * iso).value == pytest.approx(math.log(9), abs=0.03)
    line = torch.linspace(0, 5, 12)[:, None] * torch.randn(1, 24, generator=g)
    assert metric_value("curvature", line).value == pytest.approx(0.0, abs=1e-6)
    mv = metric_value("prompt_entropy", rank1[:10])
    assert mv.value == pytest.approx(0.0, abs=1e-6) and "Gram" in mv.definition and "log(min" in mv.normalization


def test_all_layers_one_pass_matches_definitions():
    from labnb.models import tiny_model
    model, tok = tiny_model("gpt2")
    res = all_layer_metrics(model, tok, ["a straight line", "b", "two words here"], metrics=("curvature", "effective_rank"))
    assert sorted(res) == [0, 1, 2]
    assert all(0 <= r["curvature"].value <= math.pi for r in res.values())


def test_linucb_finds_best_arm_with_sublinear_regret():
    X, mu, sample = synthetic_problem(n_arms=80, d=5, noise=0.5, seed=3)
    reg, bandit = run_synthetic(X, mu, sample, BanditConfig(alpha=1.0, budget=600, repeat=True), seed=3)
    assert np.bincount(bandit.pulled).argmax() == mu.argmax()
    # linear regret would double from T/2 to T; LinUCB's grows far less, and its recent pulls are nearly all optimal
    assert reg[599] < 1.25 * reg[299]
    assert np.mean(np.asarray(bandit.pulled[-100:]) == mu.argmax()) > 0.8


SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from labnb.bandit.core import BanditConfig, run_bandit, synthetic_problem
    X, mu, _ = synthetic_problem(n_arms=40, noise=0.0, seed=5)
    def slow(a):
        time.sleep(float(sys.argv[2])); return float(mu[int(a[3:])])
    run_bandit([f"arm{i}" for i in range(40)], X, slow, BanditConfig(alpha=0.7, budget=12), sys.argv[1])
""")


def test_resume_after_kill_continues_same_trajectory(tmp_path):
    script = tmp_path / "bandit_job.py"; script.write_text(SCRIPT)
    log = tmp_path / "events.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, str(script), str(log), "0.3"], env=env)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            n = sum(e.get("type") == "pull" for e in EventLog(log).events())
            if n >= 3: break
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    killed_at = sum(e.get("type") == "pull" for e in EventLog(log).events())
    assert 3 <= killed_at < 12, killed_at
    X, mu, _ = synthetic_problem(n_arms=40, noise=0.0, seed=5)
    ids = [f"arm{i}" for i in range(40)]
    calls = []
    def reward(a): calls.append(a); return float(mu[int(a[3:])])
    cfg = BanditConfig(alpha=0.7, budget=12)
    resumed = run_bandit(ids, X, reward, cfg, log)
    assert len(calls) == 12 - killed_at                    # finished pulls are not recomputed
    fresh = run_bandit(ids, X, lambda a: float(mu[int(a[3:])]), cfg, tmp_path / "fresh.jsonl")
    assert list(resumed.arm) == list(fresh.arm) and list(resumed.reward) == list(fresh.reward)


def test_missing_baseline_fails_loudly(tmp_path):
    with pytest.raises(MissingBaseline, match="no baseline score for task 'SST2'"):
        zscores({"STSB": 0.5, "SST2": 0.7}, {"STSB": (0.4, 0.05)})
    cfg = RewardConfig(tasks=("SST2",), n_test=10, samples_per_label=2, n_experiments=2, n_boot=2)
    with pytest.raises(MissingBaseline, match="baseline revision 'step99'"):
        ArmRewards("m", {"step1": "x"}, "step99", cfg, tmp_path)
    from labnb.models import tiny_model
    ar = ArmRewards("tiny", {"a": 0, "b": 1}, "b", cfg, tmp_path, loader=lambda s: tiny_model("llama", seed=s))
    with pytest.raises(MissingBaseline, match="no stored score"):
        ar.stored_baseline()


# ---- the workflow: budgeted by default, reference on request, resumable after SIGKILL, one-line config errors ----

import pandas as pd
from labnb.bandit.run import load_bandit_config, main as bandit_main, run_layer_bandit

SMOKE = """\
grid: tiny
corpus_max_examples_per_task: 4
corpus_cache_path: {t}/corpus.json
reference_cache_dir: {t}/reference
reward: {{tasks: [SST2], n_test: 30, samples_per_label: 4, n_experiments: 2, n_boot: 2}}
bandit: {{budget: 4, alpha: 0.5}}
"""


def _smoke(tmp_path) -> Path:
    f = tmp_path / "smoke.yaml"; f.write_text(SMOKE.format(t=tmp_path)); return f


def test_default_run_is_budgeted_and_reference_is_cached(tmp_path):
    cfg = load_bandit_config(_smoke(tmp_path), [f"output_dir={tmp_path}/a"])
    assert cfg.reference == "none" and cfg.bandit.algorithm == "linucb"
    r = run_layer_bandit(cfg)
    assert r.reference is None and "gap" not in r.summary
    assert r.summary["arms_evaluated"] < len(r.feats)                  # evaluations saved
    assert not (tmp_path / "reference").exists()
    brute = run_layer_bandit(cfg.replace(reference="brute", output_dir=f"{tmp_path}/b"))
    assert brute.summary["arms_evaluated"] == len(r.feats) and brute.summary["gap"] >= 0
    again = run_layer_bandit(cfg.replace(reference="brute", output_dir=f"{tmp_path}/c", bandit=cfg.bandit.replace(algorithm="random")))
    assert again.summary["arms_evaluated"] < len(r.feats)              # the reference came from the cache
    pd.testing.assert_frame_equal(again.reference, brute.reference)


def test_workflow_resumes_after_sigkill(tmp_path):
    f = _smoke(tmp_path)
    cmd = [sys.executable, "-c", "import sys; from labnb.bandit.run import main; sys.exit(main(sys.argv[1:]))",
           "run", str(f), "-q", "-s", f"output_dir={tmp_path}/killed"]
    progress = tmp_path / "killed" / "bandit_progress.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env)
    n, deadline = 0, time.time() + 240
    try:
        while time.time() < deadline and p.poll() is None:
            if progress.exists() and (n := len(pd.read_csv(progress))) >= 1: break
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
    finally: p.wait()
    assert 1 <= n < 4, n
    shown = pd.read_csv(progress)                                       # the trajectory so far is on disk
    assert 1 <= len(shown) < 4
    cfg = load_bandit_config(f, [f"output_dir={tmp_path}/killed"])
    resumed = run_layer_bandit(cfg)
    fresh = run_layer_bandit(cfg.replace(output_dir=f"{tmp_path}/fresh"))
    assert list(resumed.pulls.arm) == list(fresh.pulls.arm)
    np.testing.assert_allclose(resumed.pulls.reward, fresh.pulls.reward, rtol=1e-6)   # two processes: documented tolerance
    assert list(resumed.pulls.arm[:len(shown)]) == list(shown.arm)
    attempts = {r.unit: r.attempts for r in resumed.rewards.table.rows(status="completed")}
    finished_before = {u for u, a in attempts.items() if any(f"@{arm.replace('/L', '|L')}|" in u for arm in shown.arm)}
    assert all(attempts[u] == 1 for u in finished_before)               # no finished arm evaluated twice
    assert len(pd.read_csv(progress)) == 4


@pytest.mark.parametrize("yaml_text,needle", [("bandit:\n  algorithm: ucb1\n", "bandit.algorithm: unknown 'ucb1'"),
                                              ("reward:\n  aggregation: median\n", "reward.aggregation: unknown 'median'"),
                                              ("reward:\n  tasks: [STSB]\n  n_boot: x\n", "reward.n_boot: expected int"),
                                              ("reference: all\n", "reference: unknown 'all'"),
                                              ("grid: [\n", "invalid YAML")])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, yaml_text, needle):
    f = tmp_path / "bad.yaml"; f.write_text(yaml_text)
    assert bandit_main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and str(f) in err, err


def test_design_document_name_tables():
    import json as _json
    from labnb.bandit.core import ALGORITHMS
    from labnb.bandit.rewards import AGGREGATIONS, BASELINE_METHODS
    root = Path(__file__).resolve().parents[1] / "nbs"
    def table(nb):
        cells = _json.loads((root / nb).read_text())["cells"]
        return next("".join(c["source"]) for c in cells if c["cell_type"] == "markdown" and "Design-document names" in "".join(c["source"]))
    bandit = table("15_bandit.core.ipynb")
    for name in [*ALGORITHMS, *AGGREGATIONS, *[m for m in BASELINE_METHODS if m != "last"], "corpus_cache_path",
                 "corpus_max_examples_per_task", "bandit_progress.csv", "reference: brute"]:
        assert name in bandit, name
    rnd = table("11_rnd.core.ipynb")
    for name in ["analyze_and_visualize", "analysis.json", *(f"fig_{k}.png" for k in ("loss", "novelty_hist", "score_vs_length", "roc", "seed_spread", "pca"))]:
        assert name in rnd, name


def test_bandit_state_files_errors_name_file_line_field(tmp_path):
    from labnb.data import DataError
    from labnb.bandit.rewards import cached_corpus
    X, mu, _ = synthetic_problem(n_arms=6, noise=0.0, seed=1)
    ids = [f"arm{i}" for i in range(6)]
    cfg = BanditConfig(budget=3)
    log = tmp_path / "events.jsonl"
    run_bandit(ids, X, lambda a: float(mu[int(a[3:])]), cfg, log)
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2] + [lines[2].replace('"reward": ', '"reward": "x", "was": ')]) + "\n")
    with pytest.raises(DataError) as e: run_bandit(ids, X, lambda a: 0.0, cfg, log)
    assert (e.value.line, e.value.field) == (3, "reward") and "events.jsonl" in str(e.value)
    log.write_text("\n".join(lines[:2] + [lines[2].replace('"arm": "arm', '"arm": "gone')]) + "\n")
    with pytest.raises(DataError, match="field 'arm': pull 1: unknown arm 'gone"): run_bandit(ids, X, lambda a: 0.0, cfg, log)
    bad = tmp_path / "corpus.json"; bad.write_text('{"tasks": ["SST2"], "texts": ["a", ')
    with pytest.raises(ValueError, match=r"corpus.json: .*not valid JSON"):
        cached_corpus(["SST2"], 3, 0, bad)


TWO_SCRIPT = textwrap.dedent("""
    import sys, time
    from labnb.bandit.core import BanditConfig, run_bandit, synthetic_problem
    X, mu, _ = synthetic_problem(n_arms=20, noise=0.0, seed=7)
    def slow(a):
        with open(sys.argv[2], "a") as f: f.write(a + "\\n")
        time.sleep(0.15); return float(mu[int(a[3:])])
    run_bandit([f"arm{i}" for i in range(20)], X, slow, BanditConfig(alpha=0.7, budget=6), sys.argv[1])
""")


def test_two_processes_on_one_log_evaluate_each_pull_once(tmp_path):
    script = tmp_path / "job.py"; script.write_text(TWO_SCRIPT)
    log, calls = tmp_path / "events.jsonl", tmp_path / "calls.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ps = [subprocess.Popen([sys.executable, str(script), str(log), str(calls)], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in ps] == [0, 0]
    pulls = [e for e in EventLog(log).events() if e["type"] == "pull"]
    assert [e["t"] for e in pulls] == list(range(6)) and len({e["arm"] for e in pulls}) == 6
    assert sorted(calls.read_text().split()) == sorted(e["arm"] for e in pulls)   # no pull computed twice


def test_two_workflow_processes_on_one_folder_evaluate_nothing_twice(tmp_path):
    f = _smoke(tmp_path)
    slow = ("import sys, time; import labnb.bandit.rewards as R; score = R.mteb_score\n"
            "def slow(*a, **k): time.sleep(1.5); return score(*a, **k)\n"
            "R.mteb_score = slow\nfrom labnb.bandit.run import main; sys.exit(main(sys.argv[1:]))")   # wide race windows
    cmd = [sys.executable, "-c", slow, "run", str(f), "-q", "-s", "bandit.budget=1", "-s", f"output_dir={tmp_path}/shared"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ps = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=240) for p in ps] == [0, 0]
    from labnb.store import StatusTable
    rows = StatusTable(tmp_path / "shared" / "rewards" / "rewards.sqlite").rows()
    assert rows and all(r.status == "completed" and r.attempts == 1 for r in rows), [(r.unit, r.attempts) for r in rows if r.attempts != 1]
    assert len(pd.read_csv(tmp_path / "shared" / "bandit_progress.csv")) == 1


@pytest.mark.parametrize("yaml_text,needle", [("objective: mlm\n", "objective: unknown 'mlm'"),
                                              ("seq_len: 15\nobjective: contrastive\n", "seq_len: contrastive needs an even"),
                                              ("max_steps: x\n", "max_steps: expected int"),
                                              ("save_steps: [0, 5]\nmax_steps: 6\n", "save_steps: must include max_steps=6")])
def test_bad_training_config_exits_2_with_one_line(tmp_path, capsys, yaml_text, needle):
    f = tmp_path / "bad.yaml"; f.write_text(yaml_text)
    assert bandit_main(["train", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and str(f) in err, err
    assert bandit_main(["train", "no-such-run"]) == 2
    assert "no checkpoints training config 'no-such-run' (known: " in capsys.readouterr().err


def test_train_command_continues_a_model_into_a_grid(tmp_path, capsys, monkeypatch):
    "`labnb bandit train` continues a model contrastively; its checkpoints are a `run:` grid, killed or not."
    from labnb.bandit.core import model_grid
    from labnb.models import tiny_model
    init = tmp_path / "init"
    m, tk = tiny_model("bert"); m.save_pretrained(init); tk.save_pretrained(init)
    f = tmp_path / "c.yaml"
    f.write_text(f"run: c\ninit: {init}\nobjective: contrastive\nseq_len: 16\nbatch_size: 4\nmax_steps: 4\n"
                 f"save_steps: [0, 2, 4]\nmax_chars: 20000\nwarmup: 1\nsources: [gsm8k_train]\n")
    monkeypatch.setenv("LABNB_HOME", str(tmp_path))                     # checkpoints go to <home>/.cache/models/c
    assert bandit_main(["train", str(f), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "grid: run:c" and "step4" in out
    g = model_grid("run:c")
    assert list(g.checkpoints) == ["step0", "step2", "step4"] and g.baseline == "step4"
    assert Path(g.checkpoints["step4"]).parent == tmp_path / ".cache" / "models" / "c"
    from labnb.models import load_model
    m4, _ = (g.loader or load_model)(g.checkpoints["step4"])
    assert any(not torch.equal(a, b) for a, b in zip(m.state_dict().values(), m4.state_dict().values()))
