"End-to-end checks of embeddings + RND novelty on tiny data (seconds, CPU)."
import numpy as np
import pytest
import torch

from labnb.embeddings import embedding_entry, load_embeddings, precompute_embeddings, texts_sha256, tiny_encoder
from labnb.rnd.core import (NoveltyExperiment, PairInputs, RNDConfig, check_differs, evaluate, make_controls, run_seeds,
                       score, summarize, train_rnd)
from labnb.store import ArrayCache, CacheMismatch, RunFolder

TEXTS = ["two plus two is four", "a train leaves at noon", "she buys 3 apples", "x", "the answer is 42",
         "how many eggs remain?", "half of ten is five"]


def _subspace_data(seed=0, d=12, k=3):
    "Seen rows on a k-dim subspace of d-dim space; novel rows off it with matched norms."
    g = np.random.default_rng(seed)
    basis = g.normal(size=(k, d))
    train = (g.normal(size=(500, k)) @ basis).astype(np.float32)
    held = (g.normal(size=(150, k)) @ basis).astype(np.float32)
    novel = g.normal(size=(150, d)).astype(np.float32)
    novel *= np.linalg.norm(held, axis=1, keepdims=True) / np.linalg.norm(novel, axis=1, keepdims=True)
    return train, held, novel


CFG = RNDConfig(target_layers=[32], predictor_layers=[64], out_dim=16, epochs=12, batch_size=32, lr=3e-3)


def test_training_lowers_seen_error():
    train, held, _ = _subspace_data()
    from labnb.rnd.core import RND
    from labnb.core import seed_everything
    seed_everything(0)
    before = score(RND(train.shape[1], CFG), held).mean()
    model, hist = train_rnd(train, CFG, X_val=held)
    assert hist["train_loss"][-1] < 0.3 * hist["train_loss"][0]
    assert hist["val_loss"][-1] < 0.3 * before


@pytest.mark.parametrize("normalize_inputs", [True, False])
def test_novel_scores_higher(normalize_inputs):
    train, held, novel = _subspace_data(1)
    model, _ = train_rnd(train, CFG.replace(normalize_inputs=normalize_inputs))
    s_held, s_novel = score(model, held), score(model, novel)
    assert s_novel.mean() > 2 * s_held.mean()
    assert (s_novel > np.median(s_held)).mean() > 0.9


def test_controls_differ_from_seen_and_score_higher():
    train, held, novel = _subspace_data(2)
    emb = {"train": (train[:, :6], train[:, 6:]), "seen": (held[:, :6], held[:, 6:]), "unseen": (novel[:, :6], novel[:, 6:])}
    res = evaluate(emb, CFG)
    for c in ("shuffled", "gaussian"):
        assert res["stats"][c]["ratio"] > 1.5, (c, res["stats"][c])
        assert res["stats"][c]["auroc"] > 0.8
    # answer-only inputs: a shuffle of seen answers would BE the seen answers, so no shuffled control exists
    assert "shuffled" not in evaluate(emb, CFG.replace(input_mode="answer"), baselines=())["stats"]


def test_control_equal_to_seen_is_refused():
    g = np.random.default_rng(0)
    problems = np.repeat(g.normal(size=(1, 4)).astype(np.float32), 5, axis=0)   # identical items:
    answers = np.repeat(g.normal(size=(1, 4)).astype(np.float32), 5, axis=0)    # any shuffle equals seen
    with pytest.raises(ValueError, match="must differ from seen"):
        make_controls(problems, answers, "concat", g, controls=("shuffled",))
    with pytest.raises(ValueError, match="must differ from seen"):
        check_differs(answers[::-1], answers)
    with pytest.raises(ValueError, match="unknown"):
        make_controls(problems, answers, "concat", g, controls=("noise",))


def test_seeds_resume_from_run_folder(tmp_path):
    train, held, novel = _subspace_data(3)
    emb = {"train": (train[:, :6], train[:, 6:]), "seen": (held[:, :6], held[:, 6:]), "unseen": (novel[:, :6], novel[:, 6:])}
    run = RunFolder(tmp_path)
    a = run_seeds(emb, CFG.replace(epochs=2), [0, 1, 2], run=run, progress=False)
    files = {s: next(tmp_path.glob(f"seed_{s}-*.npz")) for s in (0, 1, 2)}
    files[1].unlink()                                       # as if killed during seed 1
    stamp = {s: files[s].stat().st_mtime_ns for s in (0, 2)}
    b = run_seeds(emb, CFG.replace(epochs=2), [0, 1, 2], run=run, progress=False)
    assert {s: files[s].stat().st_mtime_ns for s in (0, 2)} == stamp and files[1].exists()
    np.testing.assert_allclose(a[1]["scores"]["unseen"], b[1]["scores"]["unseen"], rtol=1e-5)
    m = summarize(b)
    assert m["n_seeds"] == 3 and m["rnd"]["unseen"]["auroc_std"] >= 0


def test_memmap_pair_inputs(tmp_path):
    g = np.random.default_rng(0)
    p, a = g.normal(size=(50, 3)).astype(np.float32), g.normal(size=(50, 5)).astype(np.float32)
    np.save(tmp_path / "p.npy", p); np.save(tmp_path / "a.npy", a)
    x = PairInputs(np.load(tmp_path / "p.npy", mmap_mode="r"), np.load(tmp_path / "a.npy", mmap_mode="r"))
    assert x.dim == 8 and len(x) == 50
    np.testing.assert_array_equal(x[np.array([3, 7])], np.concatenate([p[[3, 7]], a[[3, 7]]], 1))
    model, hist = train_rnd(x, CFG.replace(epochs=2))
    assert len(hist["train_loss"]) == 2 and np.isfinite(hist["train_loss"]).all()
    with pytest.raises(ValueError, match="input_mode"):
        PairInputs(p, a, "question")


def test_cache_refuses_mismatch(tmp_path):
    model, tok = tiny_encoder()
    cache = ArrayCache(tmp_path)
    kw = dict(layers=(1,), model_id="tiny", dataset="toy", text_field="t", progress=False, batch_size=4)
    e = precompute_embeddings(model, tok, TEXTS, cache=cache, **kw)[1]
    assert isinstance(e, np.memmap)
    with pytest.raises(CacheMismatch, match="revision"):
        precompute_embeddings(model, tok, TEXTS, cache=cache, revision="other", **kw)
    name = embedding_entry(model_id="tiny", pooling="mean", layer=1, dataset="toy", text_field="t", normalize=False,
                           max_length=256, texts_sha=texts_sha256(TEXTS))
    for bad in ({"layer": 2}, {"pooling": "cls"}, {"model_id": "other-encoder"}, {"revision": "v2"}):
        with pytest.raises(CacheMismatch, match=next(iter(bad))):
            load_embeddings(name, cache, **bad)


class _CountingModel(torch.nn.Module):
    "Counts forward calls; raises once after `fail_after` calls (a killed run)."
    def __init__(self, m, fail_after=None):
        super().__init__(); self.m, self.config, self.calls, self.fail_after = m, m.config, 0, fail_after
    def forward(self, **kw):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            self.fail_after = None; raise KeyboardInterrupt("killed")
        return self.m(**kw)


def test_resume_mid_embedding(tmp_path):
    model, tok = tiny_encoder(seed=1)
    ref = precompute_embeddings(model, tok, TEXTS, layers=(2,), model_id="tiny", batch_size=1, progress=False)[2]
    cache, m = ArrayCache(tmp_path), _CountingModel(model, fail_after=5)
    kw = dict(layers=(2,), model_id="tiny", batch_size=1, chunk_size=2, dataset="toy", progress=False)
    with pytest.raises(KeyboardInterrupt):
        precompute_embeddings(m, tok, TEXTS, cache=cache, **kw)
    m.calls = 0
    out = precompute_embeddings(m, tok, TEXTS, cache=cache, **kw)[2]
    assert m.calls == len(TEXTS) - 4          # two finished chunks of 2 were kept
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_experiment_config_errors():
    with pytest.raises(ValueError, match="n_train"):
        NoveltyExperiment(n_train=1)
    with pytest.raises(ValueError, match="rnd.lr"):
        NoveltyExperiment.from_dict({"rnd": {"lr": "fast"}})


# ---- a SIGKILL at any moment of precompute_embeddings, then a rerun: the same cache ----

import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import labnb.embeddings as E
    from labnb.store import ArrayCache
    slow = E.encode_batch
    def encode_batch(*a, **k):
        time.sleep(0.05); return slow(*a, **k)
    E.encode_batch = encode_batch
    texts = [f"item {i}: " + "word " * (i % 7) for i in range(40)]
    model, tok = E.tiny_encoder(seed=3)
    print("ready", flush=True)
    E.precompute_embeddings(model, tok, texts, layers=(1, 2), model_id="tiny", dataset="kill", batch_size=2,
                            chunk_size=6, cache=ArrayCache(sys.argv[1]), progress=False)
    print("done", flush=True)
""")


def test_embedding_cache_survives_sigkill_at_any_moment(tmp_path):
    torch.set_num_threads(1)
    script = tmp_path / "embed_job.py"; script.write_text(KILL_SCRIPT)
    root = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    kills = 0
    for delay in (0.3, 0.9, 1.6):                           # early, mid-chunks, late: each run resumes the last
        p = subprocess.Popen([sys.executable, str(script), str(root)], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(delay)
            if p.poll() is None: p.send_signal(signal.SIGKILL); kills += 1
        finally: p.wait()
        if p.returncode == 0: break
    assert kills >= 2, kills
    texts = [f"item {i}: " + "word " * (i % 7) for i in range(40)]
    model, tok = tiny_encoder(seed=3)
    kw = dict(layers=(1, 2), model_id="tiny", dataset="kill", batch_size=2, chunk_size=6, progress=False)
    resumed = precompute_embeddings(model, tok, texts, cache=ArrayCache(root), **kw)
    fresh = precompute_embeddings(model, tok, texts, cache=ArrayCache(tmp_path / "fresh"), **kw)
    for l in (1, 2):   # separate processes: equal within a documented tolerance (float32 forward passes)
        np.testing.assert_allclose(np.asarray(resumed[l]), np.asarray(fresh[l]), rtol=1e-5, atol=1e-6)
        assert resumed[l].shape == (40, 32)
    entries = lambda r: sorted(str(p.parent.relative_to(r)) for p in r.rglob("manifest.json") if "_job-" not in str(p))
    assert entries(root) == entries(tmp_path / "fresh")                  # the same entries, nothing half-written
    again = precompute_embeddings(model, tok, texts, cache=ArrayCache(root), **kw)
    for l in (1, 2): np.testing.assert_array_equal(np.asarray(again[l]), np.asarray(resumed[l]))


# ---- the document's analyze_and_visualize: six figures and a JSON summary per run ----

def test_analysis_makes_six_figures_and_json(tmp_path):
    import json
    from labnb.rnd.core import analyze_and_visualize
    train, held, novel = _subspace_data(4)
    emb = {"train": (train[:, :6], train[:, 6:]), "seen": (held[:, :6], held[:, 6:]), "unseen": (novel[:, :6], novel[:, 6:])}
    res = run_seeds(emb, CFG.replace(epochs=2), [0, 1], run=RunFolder(tmp_path / "run"), progress=False)
    res = run_seeds(emb, CFG.replace(epochs=2), [0, 1], run=RunFolder(tmp_path / "run"), progress=False)   # loaded from disk
    lengths = {"seen": np.arange(len(held)), "unseen": np.arange(len(novel)) * 2}
    a = analyze_and_visualize(res, tmp_path / "out", lengths=lengths)
    want = {f"fig_{k}.png" for k in ("loss", "novelty_hist", "score_vs_length", "roc", "seed_spread", "pca")}
    assert set(a["figures"]) == want and all((tmp_path / "out" / f).stat().st_size > 1000 for f in want)
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert saved["summary"]["n_seeds"] == 2 and set(saved["length_spearman"]) == {"seen", "unseen"}
    assert 0 < sum(saved["pca"]["explained_variance_ratio"]) <= 1 + 1e-9
    assert saved["summary"]["knn"]["unseen"]["auroc_mean"] > 0.5     # baseline scores survive the reload


def test_pair_texts_names_bad_datasets():
    from labnb.data import DataError
    from labnb.rnd.core import pair_texts
    with pytest.raises(DataError, match="holds LabelledText records, not pairs"):
        pair_texts("sst2", "dev", 3)


def test_experiment_refuses_non_pair_datasets_by_key():
    with pytest.raises(ValueError, match="unseen_dataset: 'sst2' holds LabelledText records"):
        NoveltyExperiment(unseen_dataset="sst2")
    with pytest.raises(ValueError, match="train_dataset: unknown dataset 'gsm9k'"):
        NoveltyExperiment.from_dict({"train_dataset": "gsm9k"})
