"Scoring, failure taxonomy, bootstrap, transition detection and the report of the KV-budget harness on hand-made cases."
import json

import numpy as np
import pandas as pd
import pytest

from labnb.kv.score import (normalize_answer, exact_match, token_f1, contains_match, score_response, score_store,
                            FAILURE_RULES)
from labnb.kv.store import KVStore
from labnb.kv.analyze import (AnalysisConfig, bootstrap_ci, bootstrap_diff_ci, detect_transition, detect_transition_ci,
                              focus_plan, load_results, summarize, synthetic_store, transitions)
from labnb.kv.report import request_status, write_report

UUID = "3f2a9b1c-0d4e-4a5b-9c8d-7e6f5a4b3c2d"


# --- scoring -------------------------------------------------------------------------------------------------------

def test_token_f1_by_hand():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]; P = 2/2, R = 2/3, F1 = 2PR/(P+R) = 0.8
    assert token_f1("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    # max over golds: against "cat" F1 = 2*(1/2)*1/(3/2) = 2/3 < 0.8
    assert token_f1("the cat sat", ["cat", "a cat sat down"]) == pytest.approx(0.8)
    assert token_f1("the cat sat", ["cat"]) == pytest.approx(2 / 3)
    assert token_f1("dog", ["cat"]) == 0.0


def test_normalization_em_and_containment():
    assert normalize_answer("  The  Eiffel-Tower!") == "eiffeltower"             # punctuation is deleted, not spaced
    assert normalize_answer("A theater") == "theater"
    assert exact_match("Paris.", ["London", "paris"]) == 1.0
    assert exact_match("Paris, France", ["paris"]) == 0.0
    assert contains_match("I think it is Paris, France.", ["paris"]) == 1.0
    assert contains_match("Parisian", ["paris"]) == 0.0                        # token boundaries


@pytest.mark.parametrize("text,finish,etype,err,want", [
    ("The value is " + UUID + ".", "stop", None, None, ("correct", None)),
    ("The value is " + UUID + " and", "length", None, None, ("correct", None)),
    ("The value is 00000000-0d4e-4a5b-9c8d-7e6f5a4b3c2d.", "stop", None, None, ("wrong", None)),
    ("", None, "TIMEOUT", "read timeout", ("failure", "TIMEOUT")),
    ("", None, "HTTP_5XX", "503 after 3 retries", ("failure", "ENGINE_ERROR")),
    ("", "stop", None, None, ("failure", "EMPTY_OUTPUT")),
    ("I cannot answer this question.", "stop", None, None, ("failure", "REFUSAL")),
    ("Let me look through the keys one by one, starting", "length", None, None, ("failure", "TRUNCATED")),
    ("The value is 00000000-0d4e-4a5b-9c8d-7e6f5a4b3c2d, and", "length", None, None, ("wrong", None)),
    ("The answer is the key above.", "stop", None, None, ("failure", "FORMAT_ERROR")),
    ("value value value value value", "stop", None, None, ("failure", "FORMAT_ERROR")),
    (None, "stop", None, None, ("failure", "UNKNOWN_FAILURE")),
])
def test_failure_taxonomy(text, finish, etype, err, want):
    s = score_response(text, [UUID], finish, etype, err)
    assert (s["outcome"], s["failure_class"]) == want


def test_taxonomy_order_and_free_text():
    assert list(FAILURE_RULES)[:2] == ["TIMEOUT", "ENGINE_ERROR"]
    assert score_response("Lyon", ["Paris"], "content_filter")["failure_class"] == "UNKNOWN_FAILURE"
    assert score_response("\nassistant", ["Paris"], "stop")["failure_class"] == "FORMAT_ERROR"   # seen from SmolLM2
    assert score_response("Lyon", ["Paris"], "stop")["outcome"] == "wrong"       # free-text gold: no shape rule
    assert score_response("The answer is 7310.", ["4821"], "stop")["outcome"] == "wrong"


def test_incremental_scoring(tmp_path):
    st = KVStore(tmp_path / "kv.sqlite")
    st.add_examples([dict(example_id=f"e{i}", task="t", question="q", context="c", answers=["Paris"], bin=0) for i in range(3)])
    st.ensure_run("r", press="none", budget_kind="ratio", budget=1.0, model="m", tokenizer="t", prompt_template_hash="p", dataset_hash="d")
    st.add_requests("r", [(f"e{i}", "p") for i in range(3)])
    st.start_request("r", "e0"); st.record_response("r", "e0", dict(text="Paris", finish_reason="stop"))
    assert score_store(st, progress=False) == 1
    assert score_store(st, progress=False) == 0
    st.start_request("r", "e1"); st.record_response("r", "e1", dict(text="Rome", finish_reason="stop"))
    assert score_store(st, progress=False) == 1
    sc = st.df("scores").set_index("example_id")
    assert sc.loc["e0", "em"] == 1.0 and sc.loc["e1", "em"] == 0.0
    assert json.loads(sc.loc["e1", "detail"])["outcome"] == "wrong"


# --- bootstrap and transitions -------------------------------------------------------------------------------------

def test_bootstrap_seeded_reproducible():
    x = np.random.default_rng(0).normal(0.5, 0.2, 80)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    a, b = x[:40], x[40:]
    assert bootstrap_diff_ci(a, b, seed=3) == bootstrap_diff_ci(a, b, seed=3)


def test_summary_ci_independent_of_other_runs(tmp_path):
    res = load_results(synthetic_store(tmp_path / "kv.sqlite", n_per_bin=10, bins=2, budgets=(1.0, 0.5, 0.1)))
    full = summarize(res, n_boot=200)
    sub = summarize(res[res.budget != 0.5], n_boot=200)
    pd.testing.assert_frame_equal(full[full.budget != 0.5].reset_index(drop=True), sub)   # seeds follow the group key


def test_transition_clear_drop_and_no_drop():
    assert detect_transition({1.0: 0.9, 0.5: 0.88, 0.25: 0.4, 0.1: 0.2}, 0.1).budget == 0.25
    assert detect_transition({1.0: 0.9, 0.5: 0.85, 0.25: 0.82, 0.1: 0.8}, 0.1).budget is None
    rng = np.random.default_rng(1)
    clear = {b: rng.binomial(1, p, 80).astype(float) for b, p in {1.0: 0.9, 0.5: 0.9, 0.25: 0.3, 0.1: 0.2}.items()}
    t = detect_transition_ci(clear, 0.1)
    assert t.budget == 0.25 and t.diff_lo > 0
    assert detect_transition_ci(clear, 0.1, rule="overlap").budget == 0.25


def test_noisy_drop_rejected_by_ci_variant():
    # 10 examples per budget: 0.6 -> 0.4 passes the 0.1 threshold, but the CI of the difference includes 0
    noisy = {1.0: np.array([1., 1, 1, 1, 1, 1, 0, 0, 0, 0]), 0.5: np.array([1., 1, 1, 1, 0, 0, 0, 0, 0, 0])}
    assert detect_transition({b: v.mean() for b, v in noisy.items()}, 0.1).budget == 0.5
    assert detect_transition_ci(noisy, 0.1, rule="diff").budget is None
    assert detect_transition_ci(noisy, 0.1, rule="overlap").budget is None


def test_transitions_per_bin_and_focus_plan(tmp_path):
    curve = lambda task, press, b, budget: 0.9 if budget >= (0.5 if b == 1 else 0.25) else 0.05
    res = load_results(synthetic_store(tmp_path / "kv.sqlite", n_per_bin=30, bins=2, curve=curve, fail=0.0, seed=4))
    tr = transitions(res, "contains", n_boot=300)
    assert tr.transition_ci.tolist() == [0.1, 0.25]
    plan = focus_plan(res, "contains", target_width=0.1, cap=50)
    assert set(map(tuple, plan[["bin", "budget"]].values.tolist())) == {(0, 0.25), (0, 0.1), (1, 0.5), (1, 0.25)}
    assert (plan.n_target <= 50).all() and (plan.n_more > 0).any()


def test_above_chance_binomial_by_hand():
    from labnb.kv.analyze import above_chance, binom_sf
    assert binom_sf(2, 3, 0.25) == pytest.approx(10 / 64)        # 3*(1/4)^2*(3/4) + (1/4)^3
    assert above_chance([1, 1, 1], 0.25) and not above_chance([1, 1, 0], 0.25)
    assert above_chance([1, 0, 0], 0.0) and not above_chance([0, 0, 0], 0.0)


# --- report --------------------------------------------------------------------------------------------------------

def test_report_partial_run_says_partial(tmp_path):
    st = synthetic_store(tmp_path / "kv.sqlite", n_per_bin=6, bins=2, budgets=(1.0, 0.25), missing=3)
    assert int(request_status(st).missing.sum()) == 3
    md = write_report(st, tmp_path / "out", "demo", AnalysisConfig(n_boot=200), figures=False).read_text()
    assert md.splitlines()[0] == "# KV-budget report: demo — PARTIAL"
    assert "3 of 24 planned requests have no response" in md


def test_report_complete_run(tmp_path):
    st = synthetic_store(tmp_path / "kv.sqlite", n_per_bin=6, bins=2, budgets=(1.0, 0.25))
    md = write_report(tmp_path / "kv.sqlite", tmp_path / "out", "demo", AnalysisConfig(n_boot=200)).read_text()
    assert "PARTIAL" not in md and "Full-budget accuracy per bin" in md and "| chance |" in md
    assert (tmp_path / "out" / "fig_accuracy_synthetic_kv.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="missing.sqlite"):
        write_report(tmp_path / "missing.sqlite", tmp_path / "out2")


def test_a_new_analysis_version_is_not_served_from_the_stored_analysis(tmp_path, monkeypatch):
    "The persisted analysis is reused only when scores, config AND the analysis code's version are unchanged."
    import labnb.kv.analyze as ka
    st = synthetic_store(tmp_path / "kv.sqlite", n_per_bin=4, bins=2, budgets=(1.0, 0.25))
    k1 = ka.analysis_key(st, AnalysisConfig(n_boot=100))
    assert ka.analysis_key(st, AnalysisConfig(n_boot=100)) == k1
    monkeypatch.setattr(ka, "ANALYSIS_VERSION", ka.ANALYSIS_VERSION + 1)
    assert ka.analysis_key(st, AnalysisConfig(n_boot=100)) != k1


def test_bins_at_0_of_n_and_n_of_n_get_wilson_bars_not_zero_width(tmp_path):
    "5/5 and 0/5 bins: the CI is Wilson's (never zero width) and the accuracy figure draws it."
    from labnb.kv.analyze import plot_accuracy
    curve = lambda task, press, b, budget: 1.0 if budget >= 0.5 else 0.0
    res = load_results(synthetic_store(tmp_path / "kv.sqlite", n_per_bin=5, bins=2, budgets=(1.0, 0.5, 0.1), curve=curve, fail=0.0))
    sm = summarize(res, n_boot=200)
    full, low = sm[sm.budget == 1.0], sm[sm.budget == 0.1]
    assert (full.contains == 1.0).all() and (low.contains == 0.0).all()
    assert np.allclose(full.contains_lo, 0.5655, atol=1e-3) and (full.contains_hi == 1.0).all()
    assert (low.contains_lo == 0.0).all() and np.allclose(low.contains_hi, 0.4345, atol=1e-3)
    plot_accuracy(sm, "contains")
