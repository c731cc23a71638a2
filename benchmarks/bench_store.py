"""Status stores at 1k, 10k and 100k units: per-unit cost must stay flat as work grows.

For `labnb.store.StatusTable` (every workflow's resume primitive): registering units (one batched transaction),
claim + complete of one unit (a lease, then the result), listing pending units, and the full resume scan that
`StatusTable.run` does before it starts (`add` of all units again + one status query). The baseline, measured in the
same run and interleaved with labnb (A B A B ...), is plain SQLite on one connection doing the same two updates per
unit without leases. The KV harness's request store (`labnb.kv.store.KVStore`, whose requests are units of a
`StatusTable` in its own file) is measured at the same sizes by `bench_kv.bench_store`. Writes benchmarks/results/store.json.
"""
import os, sqlite3, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleave, load, pin_threads, write

from labnb.store import StatusTable

SIZES = [int(x) for x in os.environ.get("BENCH_SIZES", "1000,10000,100000").split(",")]
REPS = int(os.environ.get("BENCH_REPS", 5))
SAMPLE = int(os.environ.get("BENCH_SAMPLE", min(SIZES) // (REPS + 1)))   # claim+complete timed on this many fresh units per round


def plain_sqlite(path: Path, units: list[str]):
    "The baseline: the same schema and two autocommit updates per unit on one connection, no leases."
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL"); con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE IF NOT EXISTS units (unit TEXT PRIMARY KEY, status TEXT, attempts INT DEFAULT 0, result TEXT)")
    con.execute("BEGIN"); con.executemany("INSERT OR IGNORE INTO units(unit, status) VALUES (?, 'pending')", ((u,) for u in units))
    con.execute("COMMIT")
    return con


def measure(n: int, d: Path) -> dict:
    units = [f"exp/run-{i:07d}" for i in range(n)]
    st = StatusTable(d / "status.sqlite")
    t = time.perf_counter(); st.add(units); add_s = time.perf_counter() - t
    base = plain_sqlite(d / "plain.sqlite", units)
    rounds = iter(range(10**9))
    def labnb_claim_complete():
        r = next(rounds)
        for u in units[(r * SAMPLE) % n:][:SAMPLE]:
            assert st.claim(u); st.complete(u, {"ok": 1})
    brounds = iter(range(10**9))
    def plain_claim_complete():
        r = next(brounds)
        for u in units[(r * SAMPLE) % n:][:SAMPLE]:
            base.execute("UPDATE units SET status='running', attempts=attempts+1 WHERE unit=?", (u,))
            base.execute("UPDATE units SET status='completed', result=? WHERE unit=?", ('{"ok": 1}', u))
    cc = interleave({"labnb": labnb_claim_complete, "plain_sqlite": plain_claim_complete}, REPS)
    scan = interleave({"pending": lambda: st.rows(status="pending"),
                       "resume_scan": lambda: (st.add(units), st.statuses())}, REPS)
    per = lambda k: cc[k]["median_s"] / SAMPLE * 1000
    return {"units": n, "add_all_s": round(add_s, 3), "add_per_unit_ms": round(add_s / n * 1000, 4),
            "claim_complete_ms": round(per("labnb"), 4), "claim_complete_min_ms": round(cc["labnb"]["min_s"] / SAMPLE * 1000, 4),
            "claim_complete_max_ms": round(cc["labnb"]["max_s"] / SAMPLE * 1000, 4),
            "plain_sqlite_two_updates_ms": round(per("plain_sqlite"), 4),
            "ratio_labnb_over_plain": round(per("labnb") / per("plain_sqlite"), 2),
            "list_pending_s": round(scan["pending"]["median_s"], 4), "resume_scan_s": round(scan["resume_scan"]["median_s"], 4),
            "resume_scan_max_s": round(scan["resume_scan"]["max_s"], 4)}


def main() -> dict:
    pin_threads(1)
    load0, rows = load(), []
    for n in SIZES:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
            rows.append(measure(n, Path(d))); print(rows[-1], flush=True)
    from bench_kv import bench_store as kv_store_bench
    kv = [kv_store_bench(n) for n in SIZES]
    flat = rows[-1]["claim_complete_ms"] / rows[0]["claim_complete_ms"]
    return write("store", {"what": "StatusTable per-unit costs vs size; baseline plain SQLite (two autocommit updates per unit), interleaved",
                           "sample_per_round": SAMPLE, "sizes": rows, "kv_store": kv, "claim_complete_largest_over_smallest": round(flat, 2),
                           "targets": {"claim_complete_ms": 0.2, "resume_scan_s_at_100k": 10},
                           "loadavg_start": load0, "loadavg_end": load()})


if __name__ == "__main__":
    main()
