"""Transition detection as the design rule states it: a drop of at least `threshold` from the next larger budget,
robust to float error (means of 5 examples), per bin and pooled over bins (with the bin of the largest drop)."""
import numpy as np
import pandas as pd

from labnb.kv.analyze import AnalysisConfig, analyze, detect_transition, transition_summary, transitions

BUDGETS = (1.0, 0.5, 0.25, 0.1)


def frame(curves: dict, n: int = 5, press: str = "streaming_llm") -> pd.DataFrame:
    "Results with `n` examples per (bin, budget), the first `k` right, where `curves[bin] = [k at each budget]`."
    rows = [dict(task="needle", press=press, budget_kind="ratio", budget=b, bin=bin_, run_id=f"{press}-{b}",
                 example_id=f"e{bin_}-{i}", contains=float(i < k), em=float(i < k), f1=float(i < k))
            for bin_, ks in curves.items() for b, k in zip(BUDGETS, ks) for i in range(n)]
    return pd.DataFrame(rows)


# the published needle / streaming_llm bins (5 examples each): bin 3 0.6 -> 0.4 -> 0.2 -> 0.0, bin 4 1.0 -> 0.8 -> 0.6 -> 0.4
PUBLISHED = {0: [5, 5, 5, 5], 1: [5, 5, 5, 4], 2: [5, 5, 4, 4], 3: [3, 2, 1, 0], 4: [5, 4, 3, 2]}


def test_equal_steps_of_exactly_the_threshold_are_transitions():
    tr = transitions(frame(PUBLISHED), "contains", threshold=0.2, n_boot=200).set_index("bin")
    assert tr.loc[4, "transition"] == 0.5                       # 1.0 -> 0.8 is a drop of 0.2 (was flagged at 0.25 only)
    assert tr.loc[3, "transition"] == 0.5                       # 0.6 -> 0.4 (was never flagged)
    assert np.isnan(tr.loc[0, "transition"]) and tr.loc[1, "transition"] == 0.1
    assert "transition_ci" in tr                                  # the CI-aware detector stays beside it


def test_point_rule_on_means_of_five():
    mean = lambda k: float(np.mean([1.0] * k + [0.0] * (5 - k)))
    assert detect_transition({b: mean(k) for b, k in zip(BUDGETS, [5, 4, 3, 2])}, 0.2).budget == 0.5
    assert detect_transition({b: mean(k) for b, k in zip(BUDGETS, [3, 2, 1, 0])}, 0.2).budget == 0.5
    assert detect_transition({b: mean(k) for b, k in zip(BUDGETS, [5, 5, 5, 5])}, 0.2).budget is None
    assert detect_transition({1.0: 0.9, 0.5: 0.71}, 0.2).budget is None


def test_pooled_rule_and_bin_of_largest_drop():
    ts = transition_summary(frame(PUBLISHED), "contains", threshold=0.1).iloc[0]
    # pooled over 25 examples: 23/25 = 0.92 -> 21/25 = 0.84 (0.08) -> 18/25 = 0.72 (0.12): the transition is 0.25
    assert (ts.transition_budget, ts.prev_budget) == (0.25, 0.5)
    assert ts.transition_bin_idx == 2 and abs(ts.bin_drop - 0.2) < 1e-9   # bins 2, 3, 4 drop 0.2: the smallest wins
    assert ts.experiment_group == "needle/streaming_llm/ratio"
    ts = transition_summary(frame({0: [5, 5, 5, 5], 1: [5, 5, 0, 0], 2: [5, 5, 4, 4]}), "em", threshold=0.2).iloc[0]
    assert (ts.transition_budget, ts.transition_bin_idx) == (0.25, 1)
    exact = transition_summary(frame({0: [5, 4, 4, 4]}), "em", threshold=0.2).iloc[0]   # 1.0 -> 0.8 exactly the threshold
    assert exact.transition_budget == 0.5


def test_analyze_returns_and_writes_the_pooled_transition(tmp_path):
    out = analyze(frame(PUBLISHED).assign(answers=[["x"]] * 100, text="x", outcome="correct", failure_class=None),
                  tmp_path, AnalysisConfig(threshold=0.1, n_boot=200), figures=False)
    assert out["transition_summary"].transition_budget.tolist() == [0.25]
    assert (tmp_path / "transition_summary.csv").is_file()
