"""KV engines: the in-process engine reproduces kvpress's own pipeline text exactly; budgets keep the measured number of
KV positions; the HTTP client's retry, backoff, classification and pacing against real loopback servers."""
import copy, time

import pytest
import torch

from labnb.kv.engines import GenRequest, OpenAIEngine, Pacer, TransformersEngine, make_press
from labnb.kv.prepare import PROMPTS, TASKS
from labnb.kv.config import TaskCfg
from labnb.kv.server import FaultScript, kv_app, serve
from labnb.models import tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smol():
    "SmolLM2-135M (the offline copy); skipped when the package carrying it is absent."
    from labnb.models import load_model
    try: return load_model("smollm2-135m")
    except ModuleNotFoundError as e: pytest.skip(str(e))


@pytest.fixture(scope="module")
def tiny():
    m, tok = tiny_model("llama")
    return TransformersEngine(m, tok, model_name="tiny-llama")


def _example(n_sentences=(12, 14), i=0):
    e = TASKS["needle"].load(TaskCfg("needle", i + 1, params={"n_sentences": list(n_sentences)}), 0)[i]
    return PROMPTS["needle"].render(e)


@pytest.mark.parametrize("press,budget_kind,budget,style", [
    ("snapkv", "ratio", 0.5, "chat"), ("knorm", "ratio", 0.25, "chat"), ("streaming_llm", "ratio", 0.2, "plain"),
    ("expected_attention", "ratio", 0.5, "plain"), ("snapkv", "tokens", 80, "plain")])
def test_same_text_as_kvpress_pipeline(smol, press, budget_kind, budget, style):
    "Same example, press and budget: labnb's engine and kvpress's pipeline produce exactly the same text."
    from kvpress import KVPressTextGenerationPipeline
    from labnb.kv.engines import compression_ratio
    model, tok = smol
    ptok = tok if style == "chat" else copy.deepcopy(tok)
    if style == "plain": ptok.chat_template = None                    # the pipeline's plain path: BOS + context, "\n"
    eng = TransformersEngine(model, tok, prompt_style=style, model_name="smollm2-135m")
    c, q, a = _example((6, 8))
    req = GenRequest(c, q, a, press=press, budget_kind=budget_kind, budget=budget, max_new_tokens=10)
    mine = eng.generate(req)
    assert mine.error_type is None, mine.error
    n_ctx = eng.encode(req)[0].shape[1]
    kv_press = make_press(press, compression_ratio(budget_kind, budget, n_ctx))
    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=ptok)
    ref = pipe(c, question=q, answer_prefix=a, press=kv_press, max_new_tokens=10)["answer"]
    assert mine.text == ref
    assert mine.text.strip()                                           # a real answer, not two empty strings


def test_budget_keeps_measured_positions(tiny):
    c, q, a = _example((20, 24))
    n_ctx = tiny.encode(GenRequest(c, q, a))[0].shape[1]
    cfg = tiny.model.config
    per_pos = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    for press, kind, budget, kept in [("none", "ratio", 1.0, n_ctx), ("knorm", "ratio", 0.5, int(n_ctx * 0.5)),
                                      ("snapkv", "tokens", 100, 100), ("streaming_llm", "tokens", 10_000, n_ctx)]:
        r = tiny.generate(GenRequest(c, q, a, press=press, budget_kind=kind, budget=budget, max_new_tokens=2))
        assert r.kv_cache_bytes == kept * per_pos, (press, kind, budget)
        assert r.prompt_tokens > n_ctx                                 # the question is fed, never compressed


def test_stop_strings_and_streaming(tiny):
    c, q, a = _example()
    full = tiny.generate(GenRequest(c, q, a, max_new_tokens=10))
    pieces = []
    streamed = tiny.generate(GenRequest(c, q, a, max_new_tokens=10), on_text=pieces.append)
    assert "".join(pieces) == full.text == streamed.text
    body = full.text.lstrip(); lead = len(full.text) - len(body)
    if len(body) >= 2:                                                 # cut at the answer's second character
        cut = tiny.generate(GenRequest(c, q, a, max_new_tokens=10, stop=[body[1]]))
        assert cut.finish_reason == "stop" and cut.text == full.text[:lead + body.index(body[1])]


def test_server_roundtrip_equals_in_process(tiny):
    c, q, a = _example()
    req = GenRequest(c, q, a, press="knorm", budget=0.25, max_new_tokens=6)
    local = tiny.generate(req)
    with serve(kv_app(tiny), max_seconds=60) as url:
        for kind in ("completions", "chat"):
            cl = OpenAIEngine(url, "tiny-llama", kind=kind, max_retries=0)
            remote = cl.generate(req)
            cl.close()
            assert (remote.text, remote.kv_cache_bytes, remote.finish_reason) == (local.text, local.kv_cache_bytes, local.finish_reason)
            assert 0 < remote.ttfb_s <= remote.latency_s


def _client(url, **kw):
    return OpenAIEngine(url, "fault", **{"kind": "completions", "max_retries": 3, "backoff_s": 0.01, **kw})


def test_retries_then_success_logs_every_failed_attempt():
    fs = FaultScript(["429", "500", "502", "drop"])
    with serve(fs, max_seconds=60) as url:
        log = []
        r = _client(url, max_retries=4).generate(GenRequest("c", "q"), on_failure=lambda **kw: log.append(kw))
    assert (r.text, r.error_type) == ("42", None)
    assert [f["error_type"] for f in log] == ["HTTP_429", "HTTP_5XX", "HTTP_5XX", "BAD_RESPONSE"]
    assert [f["status_code"] for f in log] == [429, 500, 502, None] and not any(f["final"] for f in log)
    assert len(fs.requests) == 5


def test_retries_exhausted_and_non_retryable():
    fs = FaultScript(["503"] * 10)
    with serve(fs, max_seconds=60) as url:
        log = []
        r = _client(url, max_retries=2).generate(GenRequest("c", "q"), on_failure=lambda **kw: log.append(kw))
        assert r.error_type == "HTTP_5XX" and r.text == "" and [f["final"] for f in log] == [False, False, True]
        fs.actions = ["404", "ok"]
        r = _client(url).generate(GenRequest("c", "q"))
        assert r.error_type == "HTTP_4XX" and fs.played[-1] == "404"      # a client error is not retried
        fs.actions = ["malformed"]
        assert _client(url).generate(GenRequest("c", "q")).text == "42"


def test_timeout_is_classified_and_retried():
    fs = FaultScript(["delay:1.5", "ok"])
    with serve(fs, max_seconds=60) as url:
        log = []
        t0 = time.perf_counter()
        r = _client(url, timeout_s=0.3).generate(GenRequest("c", "q"), on_failure=lambda **kw: log.append(kw))
    assert r.text == "42" and log[0]["error_type"] == "TIMEOUT" and time.perf_counter() - t0 < 1.4


def test_truncation_is_reported_not_retried():
    fs = FaultScript(["truncate"], answer="forty-two")
    with serve(fs, max_seconds=60) as url:
        r = _client(url, kind="chat").generate(GenRequest("c", "q"))
    assert (r.text, r.finish_reason, r.error_type) == ("fort", "length", None) and len(fs.requests) == 1


def test_backoff_doubles_and_retry_after_wins():
    e = OpenAIEngine("http://127.0.0.1:9/v1", "m", backoff_s=0.1, backoff_max_s=1.0)
    waits = [e.backoff(k, None) for k in (1, 2, 3, 4, 5)]
    assert all(0.1 * 2 ** (k - 1) <= w <= 0.125 * 2 ** (k - 1) for k, w in zip((1, 2, 3), waits))
    assert waits[-1] <= 1.0 and e.backoff(1, 0.0) == 0.0


def test_pacing_limits_rate_and_concurrency():
    fs = FaultScript(["delay:0.2"] * 6)
    with serve(fs, max_seconds=60) as url:
        cl = _client(url, max_rpm=1200, max_concurrency=2)             # >= 0.05 s between starts, 2 in flight
        import concurrent.futures as cf
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(6) as pool: res = list(pool.map(lambda _: cl.generate(GenRequest("c", "q")), range(6)))
        took = time.perf_counter() - t0
    assert all(r.text == "42" for r in res)
    assert took >= 0.55                                                 # 6 requests of 0.2 s, 2 at a time
