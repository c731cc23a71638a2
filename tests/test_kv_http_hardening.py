"""labnb's KV server against malformed and slow clients (raw sockets on 127.0.0.1), and the HTTP client engine against
faulty or hostile servers: every malformed request gets a 4xx JSON error naming its field before anything streams,
slow or silent clients are cut off, and every server fault is one classified error for one request, never a hang."""
import json, socket, threading, time

import pytest

from labnb.kv.engines import GenRequest, GenResult, OpenAIEngine
from labnb.kv.server import kv_app, serve


class EchoEngine:
    "A stand-in for `TransformersEngine`: answers 'ok' at once, counts calls."
    model_name = "echo"
    def __init__(self): self.calls = 0
    def generate(self, req, on_failure=None, on_text=None):
        self.calls += 1
        if on_text: on_text("ok")
        return GenResult(text="ok", finish_reason="stop", prompt_tokens=3, completion_tokens=1, kv_cache_bytes=10)


def _port(url: str) -> int: return int(url.rsplit(":", 1)[1].split("/")[0])


def raw(url: str, data: bytes, wait_s: float = 5.0, then_close: bool = False):
    "Send raw bytes; returns (status or None, headers text, body bytes). Bounded by `wait_s`."
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=wait_s) as s:
        s.sendall(data)
        if then_close: s.shutdown(socket.SHUT_WR)
        out, t_end = b"", time.monotonic() + wait_s
        while time.monotonic() < t_end:
            try: got = s.recv(65536)
            except socket.timeout: break
            if not got: break
            out += got
    if not out: return None, "", b""
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode(errors="replace"), body


def post(url: str, body: bytes, path="/v1/completions", extra: str = "", length: int|None = None, **kw):
    n = len(body) if length is None else length
    req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n{extra}\r\n").encode() + body
    return raw(url, req, **kw)


def _err(body: bytes) -> str:
    d = json.loads(body)
    return d["error"]["message"]


BAD_BODIES = [
    (b'[1, 2]', "body"), (b'"hello"', "body"), (b'{"prompt": "x", "stop": 5}', "stop"),
    (b'{"prompt": "x", "stop": [1, 2]}', "stop"), (b'{"prompt": "x", "kv": "x"}', "kv"),
    (b'{"prompt": "x", "kv": {"budget": 0}}', "kv.budget"), (b'{"prompt": "x", "kv": {"budget": 5}}', "kv.budget"),
    (b'{"prompt": "x", "kv": {"budget_kind": "pages"}}', "kv.budget_kind"), (b'{"prompt": "x", "kv": {"press": 3}}', "kv.press"),
    (b'{"prompt": "x", "kv": {"budget": 0}, "stream": true}', "kv.budget"), (b'{"prompt": 7}', "prompt"),
    (b'\xff\xfe{"prompt": "x"}', "body"), (b'{"prompt": "x"', "body"),
]


def test_malformed_bodies_get_a_4xx_naming_the_field():
    eng = EchoEngine()
    with serve(kv_app(eng), max_seconds=60) as url:
        for body, field in BAD_BODIES:
            status, head, got = post(url, body)
            assert status == 400, (body, status, got)
            assert "application/json" in head and "text/event-stream" not in head, body
            msg = _err(got)
            assert msg.startswith(f"{field}:"), (body, msg)
            assert json.loads(got)["error"]["param"] == field
        status, _, got = post(url, b'{"prompt": "x", "max_tokens": 2}')     # the server still answers normally
        assert status == 200 and json.loads(got)["choices"][0]["text"] == "ok"
    assert eng.calls == 1                                                   # no bad request reached the engine


def test_bad_content_length_gets_an_answer():
    with serve(kv_app(EchoEngine()), max_seconds=60) as url:
        for value in ("abc", "-5", "1e3"):
            req = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n{{}}".encode()
            status, _, got = raw(url, req)
            assert status == 400 and _err(got).startswith("Content-Length:"), (value, status, got)
        status, _, got = raw(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 411 and _err(got).startswith("Content-Length:")
        status, _, got = post(url, b"", length=1 << 30)                    # announced body over the limit
        assert status == 413
        status, _, got = post(url, b'{"prompt": "x"}', length=100, then_close=True)   # the client sent less and closed
        assert status == 400 and "Content-Length said 100" in _err(got)


def test_silent_client_times_out_and_frees_its_thread():
    with serve(kv_app(EchoEngine()), max_seconds=60, read_timeout_s=0.5, max_threads=2) as url:
        t0 = time.monotonic()
        status, _, got = post(url, b'{"prompt": "x"}', length=100, wait_s=10)   # announces more than it sends, then waits
        assert status == 408 and time.monotonic() - t0 < 5, (status, got)
        # two clients that hold connections open without sending: the third connection is refused at once (503) ...
        holders = [socket.create_connection(("127.0.0.1", _port(url)), timeout=5) for _ in range(2)]
        time.sleep(0.1)
        status, _, _ = post(url, b'{"prompt": "x"}', wait_s=5)
        assert status == 503
        time.sleep(1.0)                                                   # ... and once their reads time out it is served
        for h in holders: h.close()
        status, _, _ = post(url, b'{"prompt": "x"}', wait_s=5)
        assert status == 200


def test_dripping_client_is_cut_off_by_the_request_deadline():
    with serve(kv_app(EchoEngine()), max_seconds=60, read_timeout_s=5, request_deadline_s=1.0) as url:
        s = socket.create_connection(("127.0.0.1", _port(url)), timeout=5)
        t0, closed = time.monotonic(), False
        try:
            for ch in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60:   # one byte every 0.1 s
                s.sendall(bytes([ch])); time.sleep(0.1)
                if time.monotonic() - t0 > 4: break
        except OSError: closed = True
        if not closed:
            s.settimeout(3)
            try: closed = s.recv(100) in (b"",) or True
            except OSError: closed = True
        s.close()
        assert closed and time.monotonic() - t0 < 8


def test_stream_with_invalid_budget_is_refused_before_streaming():
    with serve(kv_app(EchoEngine()), max_seconds=60) as url:
        status, head, got = post(url, json.dumps({"prompt": "x", "stream": True, "kv": {"budget_kind": "tokens", "budget": 2.5}}).encode())
        assert status == 400 and "event-stream" not in head and _err(got).startswith("kv.budget:")


# ---- the client engine against hostile servers ---------------------------------------------------------------------

def _read_request(c) -> bytes:
    "Read one HTTP request from socket `c`: the head, then `Content-Length` bytes of body."
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = c.recv(65536)
        if not got: return buf
        buf += got
    head, _, body = buf.partition(b"\r\n\r\n")
    n = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
    while len(body) < n:
        got = c.recv(65536)
        if not got: break
        body += got
    return head + b"\r\n\r\n" + body


class RawServer:
    "A loopback server that answers every connection with `script(sock)` (bounded by the test)."
    def __init__(self, script):
        self.script, self.sock = script, socket.socket()
        self.sock.bind(("127.0.0.1", 0)); self.sock.listen(8); self.sock.settimeout(0.2)
        self.stop, self.th = threading.Event(), threading.Thread(target=self.loop, daemon=True)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
    def loop(self):
        while not self.stop.is_set():
            try: c, _ = self.sock.accept()
            except socket.timeout: continue
            threading.Thread(target=self.one, args=(c,), daemon=True).start()
    def one(self, c):
        try:
            c.settimeout(5); _read_request(c)          # all of it: unread bytes would turn our close into an RST
            self.script(c, self.stop)
        except OSError: pass
        finally: c.close()
    def __enter__(self): self.th.start(); return self
    def __exit__(self, *a): self.stop.set(); self.th.join(5); self.sock.close()


def _head(ctype="text/event-stream", extra=""):
    return f"HTTP/1.0 200 OK\r\nContent-Type: {ctype}\r\n{extra}\r\n".encode()


SCRIPTS = {
    "garbage_json": (lambda c, stop: c.sendall(_head("application/json") + b"{nope"), "BAD_RESPONSE"),
    "chunk_not_object": (lambda c, stop: c.sendall(_head() + b"data: [1, 2]\n\ndata: 5\n\n"), "BAD_RESPONSE"),
    "wrong_content_type": (lambda c, stop: c.sendall(_head("text/html") + b"<html>hi</html>"), "BAD_RESPONSE"),
    "truncated_stream": (lambda c, stop: c.sendall(_head() + b'data: {"choices": [{"delta": {"content": "4"}}]}\n\n'), ("BAD_RESPONSE", "CONNECTION")),
    "choices_wrong_shape": (lambda c, stop: c.sendall(_head() + b'data: {"choices": "x"}\n\ndata: [DONE]\n\n'), "BAD_RESPONSE"),
    "huge_body": (lambda c, stop: [c.sendall(_head() + b"data: ") if i == 0 else c.sendall(b"x" * (1 << 20))
                                   for i in range(12) if not stop.is_set()], "BAD_RESPONSE"),
    "slowloris": (lambda c, stop: [c.sendall(_head() if i == 0 else b":") or time.sleep(0.2) for i in range(100) if not stop.is_set()], "TIMEOUT"),
    "silent": (lambda c, stop: stop.wait(10), "TIMEOUT"),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_client_survives_hostile_server(name):
    script, expected = SCRIPTS[name]
    with RawServer(script) as srv:
        eng = OpenAIEngine(srv.url, "m", kind="chat", timeout_s=1.0, max_retries=1, backoff_s=0.01)
        fails = []
        t0 = time.monotonic()
        res = eng.generate(GenRequest("c", "q"), on_failure=lambda **kw: fails.append(kw))
        took = time.monotonic() - t0
        eng.close()
    expected = (expected,) if isinstance(expected, str) else expected     # a cut stream may end in FIN or RST
    assert res.error_type in expected, (name, res)
    if name == "huge_body": assert "larger than" in res.error or "longer than" in res.error, res.error   # size caps, not a hang
    assert fails and fails[-1]["final"] and all(f["error_type"] in expected for f in fails)
    assert took < 2 * (1.0 + 1.0) + 2, took                          # two attempts, each bounded by ~timeout_s


def test_client_reads_a_plain_json_answer():
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
    with RawServer(lambda c, stop: c.sendall(_head("application/json") + body)) as srv:
        eng = OpenAIEngine(srv.url, "m", kind="chat", timeout_s=2.0, max_retries=0)
        res = eng.generate(GenRequest("c", "q")); eng.close()
    assert (res.text, res.finish_reason, res.completion_tokens, res.error_type) == ("42", "stop", 1, None)
