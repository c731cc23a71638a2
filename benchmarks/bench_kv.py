"""Harness overhead: time per request through labnb's KV harness (request row, in-process engine, response row in
SQLite) against a direct call of kvpress's own pipeline on the same inputs, same press and budget, same model.
A/B calls are interleaved so that load on the machine hits both alike; the ratio of medians is reported.

    python benchmarks/bench_kv.py [--model smollm2-135m] [--n 6] [--press snapkv] [--ratio 0.5]
    python benchmarks/bench_kv.py --store-sizes 1000,10000,100000   # the SQLite store alone, per request, by store size
"""
import argparse, copy, json, statistics, sys, tempfile, time
from pathlib import Path

import torch

from labnb.core import package_versions, now_iso
from labnb.kv.config import KVConfig, EngineCfg, PrepareCfg, RunCfg, TaskCfg
from labnb.kv.engines import TransformersEngine, make_press, compression_ratio
from labnb.kv.prepare import prepare, PROMPTS, selected_ids
from labnb.kv.run import KVRunner, RunSpec, _one
from labnb.store import atomic_write_json


def bench_store(n: int, ops: int = 2000, reps: int = 5, batch: int = 16) -> dict:
    """The KV store alone with `n` planned requests: add them (one transaction), then claim + complete one at a time
    (best of `reps` rounds of `ops // reps`; two commits), complete + claim the next in one commit (the runner's loop),
    claim `batch` at once + complete each, claim + complete once all but a few requests are finished (no scan over
    finished ones), list pending, resume scan."""
    from labnb.kv.store import KVStore, process_owner
    resp = dict(text="answer", finish_reason="stop", prompt_tokens=100, completion_tokens=5, latency_s=0.1)
    with tempfile.TemporaryDirectory() as d:
        st = KVStore(Path(d) / "kv.sqlite")
        st.add_examples([dict(example_id=f"e{i}", task="t", question="q", context="c", answers=["a"]) for i in range(n)])
        st.ensure_run("r", press="p", budget_kind="ratio", budget=0.5, model="m", tokenizer="t", prompt_template_hash="p", dataset_hash="d")
        t0 = time.perf_counter(); st.add_requests("r", [(f"e{i}", "prompt") for i in range(n)]); add_s = time.perf_counter() - t0
        me, per = process_owner(), max(1, min(ops, n // 3) // reps)
        rounds, cpu = [], []                                            # wall time, and CPU time (less sensitive to load)
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per):
                (ex, _a), = st.claim("r", 1, me); st.complete("r", ex, resp, owner=me)
            rounds.append((time.perf_counter() - t0) / per); cpu.append((time.process_time() - c0) / per)
        one_tx = []                                                     # what the runner does: record + claim next, one commit
        for _ in range(reps):
            (ex, _a), = st.claim("r", 1, me)
            t0 = time.perf_counter()
            for _ in range(per): _ok, ((ex, _a),) = st.complete_and_claim("r", ex, resp, me)
            one_tx.append((time.perf_counter() - t0) / per)
            st.complete("r", ex, resp, owner=me)
        t0, k = time.perf_counter(), 0
        while k < per:
            for ex, _a in st.claim("r", batch, me): st.complete("r", ex, resp, owner=me); k += 1
        batched = (time.perf_counter() - t0) / k
        t0 = time.perf_counter(); n_pending = len(st.pending("r")); pending_s = time.perf_counter() - t0
        t0 = time.perf_counter(); st.resume_scan("r"); scan_s = time.perf_counter() - t0
        with st.tx() as c:                                              # late in the run: all but `per` requests finished
            c.execute("UPDATE request_units SET status='completed', owner=NULL WHERE rowid IN "
                      "(SELECT rowid FROM request_units WHERE status='pending' ORDER BY rowid LIMIT ?)", (max(0, n_pending - per),))
        t0, k = time.perf_counter(), 0
        while k < per and (got := st.claim("r", 1, me)):
            st.complete("r", got[0][0], resp, owner=me); k += 1
        late = (time.perf_counter() - t0) / max(k, 1)
    return dict(n=n, add_requests_us_per_row=1e6 * add_s / n, claim_complete_ms=1000 * min(rounds),
                claim_complete_ms_median=1000 * statistics.median(rounds), claim_complete_cpu_ms=1000 * min(cpu),
                complete_and_claim_ms=1000 * min(one_tx),
                complete_and_claim_ms_median=1000 * statistics.median(one_tx), claim_batch=batch,
                claim_batch_complete_ms=1000 * batched, claim_complete_late_ms=1000 * late, pending_ms=1000 * pending_s, n_pending=n_pending,
                resume_scan_ms=1000 * scan_s)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=6, help="requests per method")
    ap.add_argument("--press", default="snapkv")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of the KV cache kept")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store-reps", type=int, default=200, help="repetitions of the SQLite bookkeeping alone")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/kv.json or kv_store.json)")
    ap.add_argument("--store-sizes", default="", help="comma-separated store sizes: benchmark the SQLite store alone")
    a = ap.parse_args(argv)
    if a.store_sizes:
        import os
        rows = [bench_store(int(n)) for n in a.store_sizes.split(",")]
        out = dict(benchmark="kv store: claim + complete per request by store size", created=now_iso(), load_avg=os.getloadavg(),
                   sizes=rows, versions=package_versions())
        atomic_write_json(a.out or Path(__file__).parent / "results" / "kv_store.json", out)
        for r in rows: print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
        return out
    a.out = a.out or str(Path(__file__).parent / "results" / "kv.json")
    torch.set_num_threads(a.threads)
    from kvpress import KVPressTextGenerationPipeline
    with tempfile.TemporaryDirectory() as d:
        cfg = KVConfig(group="bench", out_dir=d, engine=EngineCfg(model=a.model, max_new_tokens=a.max_new_tokens, stop=[]),
                       prepare=PrepareCfg(tasks=[TaskCfg("needle", a.n, params={"n_sentences": [10, 14]})], n_bins=1, per_bin=a.n),
                       run=RunCfg(presses=[a.press], budgets=[a.ratio]))
        engine = TransformersEngine(a.model, prompt_style="plain")
        prepare(cfg, tokenizer=engine.tokenizer, progress=False)
        runner = KVRunner(cfg, engine=engine)
        spec = RunSpec(a.press, "ratio", a.ratio)
        runner.open_run(spec)
        ids = selected_ids(runner.manifest)
        runner.add(spec, ids)
        tok = copy.deepcopy(engine.tokenizer); tok.chat_template = None     # the pipeline's plain prompt = ours
        pipe = KVPressTextGenerationPipeline(model=engine.model, tokenizer=tok)
        exs = runner.examples()
        harness, direct, same = [], [], 0
        _one(runner, spec, ids[0]); runner.store.query("DELETE FROM responses")   # warm-up (not timed)
        runner.store.query("UPDATE requests SET status='pending', attempts=0")
        for i in ids:
            c, q, ap_ = PROMPTS["needle"].render(exs[i])
            n_ctx = engine.encode(runner.request(exs[i], spec))[0].shape[1]
            t0 = time.perf_counter()
            ref = pipe(c, question=q, answer_prefix=ap_, press=make_press(a.press, compression_ratio("ratio", a.ratio, n_ctx)),
                       max_new_tokens=a.max_new_tokens)["answer"]
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = _one(runner, spec, i)
            harness.append(time.perf_counter() - t0)
            same += res.text == ref
        n_tokens = [exs[i]["n_tokens"] for i in ids]
        st, t0 = runner.store, time.perf_counter()                      # the harness's own bookkeeping per request
        for k in range(a.store_reps):
            i = ids[k % len(ids)]
            st.start_request(spec.run_id, i); st.record_response(spec.run_id, i, res.response())
        store_ms = 1000 * (time.perf_counter() - t0) / a.store_reps
    out = dict(benchmark="kv harness vs direct kvpress pipeline", created=now_iso(), model=a.model, press=a.press, ratio=a.ratio,
               n=len(ids), max_new_tokens=a.max_new_tokens, threads=a.threads, mean_prompt_tokens=statistics.mean(n_tokens),
               harness_s=harness, direct_s=direct, harness_median_s=statistics.median(harness),
               direct_median_s=statistics.median(direct), ratio_harness_over_direct=statistics.median(harness) / statistics.median(direct),
               identical_texts=f"{same}/{len(ids)}", store_ms_per_request=store_ms, versions=package_versions())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("harness_s", "direct_s", "versions")}, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
