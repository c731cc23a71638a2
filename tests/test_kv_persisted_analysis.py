"""The analysis lives in the store as the design names it: `bin_stats` (per run and bin), `transition_summary` (per
experiment group), telemetry with total_tokens, foreign keys on; the report renders from the persisted analysis
(no recomputation) with per-run bin tables and a sanity section; older store files are migrated in place."""
import sqlite3

import pandas as pd
import pytest

import labnb.kv.analyze as kva
from labnb.kv.analyze import AnalysisConfig, analyze, synthetic_store
from labnb.kv.report import write_report
from labnb.kv.store import KVStore


def test_tables_indexes_and_pragmas(tmp_path):
    st = synthetic_store(tmp_path / "kv.sqlite", n_per_bin=6, bins=3, budgets=(1.0, 0.5, 0.1), fail=0.1)
    analyze(st, cfg=AnalysisConfig(n_boot=200))
    assert st.query("PRAGMA foreign_keys")[0]["foreign_keys"] == 1
    cols = {r["name"]: r["pk"] for r in st.query("PRAGMA table_info(bin_stats)")}
    assert {k for k, pk in cols.items() if pk} >= {"run_id", "bin_idx"}
    assert {"n", "acc_mean", "acc_std", "em_mean", "fail_rate", "latency_p50", "latency_p95", "tokens_p50", "tokens_p95",
            "acc_ci_lo", "acc_ci_hi"} <= set(cols)
    rows = st.bin_stats()
    assert len(rows) == 3 * 3 and all(r["n"] == 6 and 0 <= r["acc_mean"] <= 1 and r["acc_ci_lo"] <= r["acc_mean"] <= r["acc_ci_hi"] for r in rows)
    ts = st.transition_summaries()
    assert [r["experiment_group"] for r in ts] == ["synthetic_kv/snapkv/ratio"]
    assert {r["name"] for r in st.query("PRAGMA index_list(bin_stats)")} and {r["name"] for r in st.query("PRAGMA index_list(transition_summary)")}
    with pytest.raises(sqlite3.IntegrityError):                     # foreign keys are enforced
        st.write_bin_stats([dict(run_id="no-such-run", bin_idx=0, task="t", metric="em", n=1)])
    assert len(st.bin_stats()) == 9


def test_total_tokens_in_telemetry(tmp_path):
    st = KVStore(tmp_path / "kv.sqlite")
    st.add_examples([dict(example_id="e", task="t", question="q", context="c", answers=["a"])])
    st.ensure_run("r", press="none", budget_kind="ratio", budget=1.0, model="m", tokenizer="t", prompt_template_hash="p", dataset_hash="d")
    st.add_requests("r", [("e", "P")]); (ex, _), = st.claim("r")
    st.complete("r", ex, dict(text="a", prompt_tokens=40, completion_tokens=2, latency_s=0.1))
    assert st.query("SELECT total_tokens FROM telemetry")[0]["total_tokens"] == 42


def test_report_reads_the_persisted_analysis(tmp_path, monkeypatch):
    st = synthetic_store(tmp_path / "kv.sqlite", n_per_bin=6, bins=2, budgets=(1.0, 0.5, 0.1))
    cfg = AnalysisConfig(n_boot=200)
    analyze(st, cfg=cfg)
    def boom(*a, **k): raise AssertionError("the report recomputed the analysis")
    for name in ("compute_analysis", "summarize", "transitions", "transition_summary", "bootstrap_ci", "above_chance"):
        monkeypatch.setattr(kva, name, boom)
    import labnb.kv.report as kvr
    for name in ("summarize", "above_chance"): monkeypatch.setattr(kvr, name, boom)
    text = write_report(st, tmp_path / "rep", "t", cfg, figures=False).read_text()
    assert "## Per-run statistics by bin" in text and "**snapkv-ratio0.5 · synthetic_kv**" in text
    assert "## Sanity validation" in text and "above chance at full budget" in text
    assert "](" not in text.split("## Limitations")[0] or "fig_" not in text   # no figure links without figure files


def test_sanity_flags_chance_and_broken_monotonicity(tmp_path):
    curve = lambda task, press, b, budget: {1.0: 0.0, 0.5: 0.9, 0.1: 0.9}[budget]   # at chance at full, then better
    st = synthetic_store(tmp_path / "kv.sqlite", n_per_bin=10, bins=2, budgets=(1.0, 0.5, 0.1), curve=curve, fail=0.0, n_keys=2)
    text = write_report(st, tmp_path / "rep", "t", AnalysisConfig(n_boot=200), figures=False).read_text()
    sanity = text.split("## Sanity validation")[1]
    assert "**check**: at full budget, not above chance" in sanity
    assert "**check**: accuracy is not monotone" in sanity


def test_figure_links_only_for_existing_figures(tmp_path):
    st = synthetic_store(tmp_path / "kv.sqlite", n_per_bin=5, bins=2, budgets=(1.0, 0.5))
    text = write_report(st, tmp_path / "rep", "t", AnalysisConfig(n_boot=200), figures=False).read_text()
    assert ".png" not in text
    text = write_report(st, tmp_path / "rep2", "t", AnalysisConfig(n_boot=200), figures=True).read_text()
    links = [l.split("](")[1].rstrip(")") for l in text.splitlines() if l.startswith("![")]
    assert links and all((tmp_path / "rep2" / l).is_file() for l in links)


V1 = """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE examples (example_id TEXT PRIMARY KEY, task TEXT NOT NULL, bin INTEGER, n_tokens INTEGER,
    question TEXT NOT NULL, context TEXT NOT NULL, answers TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE runs (run_id TEXT PRIMARY KEY, press TEXT NOT NULL, budget_kind TEXT NOT NULL, budget REAL NOT NULL, engine TEXT,
    model TEXT NOT NULL, tokenizer TEXT NOT NULL, prompt_template_hash TEXT NOT NULL, dataset_hash TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL DEFAULT 'planned', created REAL, updated REAL);
CREATE TABLE requests (run_id TEXT NOT NULL, example_id TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, prompt TEXT, round INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL,
    PRIMARY KEY (run_id, example_id));
CREATE TABLE responses (run_id TEXT NOT NULL, example_id TEXT NOT NULL, text TEXT NOT NULL DEFAULT '',
    finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, ttfb_s REAL, kv_cache_bytes INTEGER,
    error_type TEXT, error TEXT, created REAL, PRIMARY KEY (run_id, example_id));
INSERT INTO examples VALUES ('e', 't', 0, 10, 'q', 'c', '["a"]', '{}');
INSERT INTO runs (run_id, press, budget_kind, budget, model, tokenizer, prompt_template_hash, dataset_hash) VALUES ('r', 'none', 'ratio', 1, 'm', 't', 'p', 'd');
INSERT INTO requests (run_id, example_id, status, attempts) VALUES ('r', 'e', 'completed', 1);
INSERT INTO responses (run_id, example_id, text, prompt_tokens, completion_tokens) VALUES ('r', 'e', 'a', 10, 3);
"""


def test_an_older_store_is_migrated_in_place(tmp_path):
    with sqlite3.connect(tmp_path / "kv.sqlite") as c: c.executescript(V1)
    st = KVStore(tmp_path / "kv.sqlite")
    assert st.query("SELECT value FROM meta WHERE key='schema_version'")[0]["value"] == "4"
    assert {"owner", "lease_until"} <= {r["name"] for r in st.query("PRAGMA table_info(requests)")}   # the view keeps the old columns
    assert st.query("SELECT total_tokens FROM telemetry")[0]["total_tokens"] == 13
    assert st.request_counts("r")["completed"] == 1 and st.bin_stats() == []


def test_a_version_3_store_moves_its_request_lifecycle_into_a_status_table(tmp_path):
    "Status, attempts, timings, owners and leases of a version-3 file land in `request_units`, in planning order; the `requests` view reads as before."
    import socket, time
    from labnb.kv.store import LEASE_S, request_unit
    with sqlite3.connect(tmp_path / "kv.sqlite") as c:
        c.executescript(V1)
        c.execute("ALTER TABLE requests ADD COLUMN owner TEXT"); c.execute("ALTER TABLE requests ADD COLUMN lease_until REAL")
        c.execute("ALTER TABLE responses ADD COLUMN total_tokens INTEGER")
        c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', '3')")
        c.executemany("INSERT INTO examples VALUES (?, 't', 0, 10, 'q', 'c', '[\"a\"]', '{}')", [(f"e{i}",) for i in range(4)])
        now, dead = time.time(), f"{socket.gethostname()}:999999999:1"
        c.executemany("INSERT INTO requests (run_id, example_id, status, attempts, prompt, round, started, finished, owner, lease_until) "
                      "VALUES ('r', ?, ?, ?, 'P', ?, ?, ?, ?, ?)",
                      [("e3", "running", 2, 1, now, None, dead, now + LEASE_S), ("e0", "failed", 1, 0, now - 2, now - 1, None, None),
                       ("e2", "running", 1, 0, now, None, "other-host:1:1", now + LEASE_S), ("e1", "pending", 0, 2, None, None, None, None)])
        c.execute("INSERT INTO responses (run_id, example_id, error_type, error) VALUES ('r', 'e0', 'TIMEOUT', 'read timeout')")
    before = [tuple(r) for r in sqlite3.connect(tmp_path / "kv.sqlite").execute(
        "SELECT run_id, example_id, status, attempts, prompt, round, owner FROM requests ORDER BY rowid")]
    st = KVStore(tmp_path / "kv.sqlite")
    assert [tuple(r.values()) for r in st.query("SELECT run_id, example_id, status, attempts, prompt, round, owner FROM requests ORDER BY seq")] == before
    rows = st.status.rows(group="r")
    assert [r.unit for r in rows] == [request_unit("r", e) for e in ("e", "e3", "e0", "e2", "e1")]
    assert rows[2].error == "read timeout" and abs(rows[4 - 1].heartbeat - now) < 1e-6
    assert st.request_counts("r") == {"pending": 1, "running": 2, "completed": 1, "failed": 1}
    assert st.claim("r", 5) == [("e1", 1), ("e3", 3)]                   # pending first, then the dead owner's; the live lease is kept
    assert st.claim("r", 5, retry_failed=True) == [("e0", 2)]
    with st.tx() as c: c.execute("UPDATE requests SET status='pending', attempts=0 WHERE example_id='e0'")   # old scripts' updates
    assert st.status.get(request_unit("r", "e0")).status == "pending" and st.pending("r") == ["e0"]
    assert "requests" not in {r["name"] for r in st.query("SELECT name FROM sqlite_master WHERE type='table'")}
    with st.tx() as c:                                                  # inserts and deletes through the view, too
        c.execute("INSERT OR IGNORE INTO requests (run_id, example_id, prompt) VALUES ('r', 'e0', 'again'), ('r', 'e', 'new')")
    assert st.request_counts("r")["pending"] == 1 and st.query("SELECT prompt FROM request_plan WHERE example_id='e0'")[0]["prompt"] == "P"
    with st.tx() as c: c.execute("DELETE FROM requests WHERE example_id='e0'")
    assert st.pending("r") == [] and st.status.get(request_unit("r", "e0")) is None


def test_an_older_store_with_orphaned_requests_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    "A version-1 file written without foreign keys, holding a request of a run it does not have, cannot be converted: one line naming the file, the table and the first such row; nothing changed."
    from labnb.kv.store import StoreCorrupt
    db = tmp_path / "kv.sqlite"
    with sqlite3.connect(db) as c:
        c.executescript(V1); c.execute("INSERT INTO requests (run_id, example_id, status, attempts) VALUES ('gone', 'e', 'pending', 0)")
    with pytest.raises(StoreCorrupt) as e: KVStore(db)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{db}, field 'requests':") and "run 'gone'" in msg and "1 request(s)" in msg, msg
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT type FROM sqlite_master WHERE name='requests'").fetchone()[0] == "table"
        assert c.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2
        assert c.execute("SELECT name FROM sqlite_master WHERE name IN ('request_plan', 'request_units')").fetchall() == []
