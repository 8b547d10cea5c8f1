"""HttpClient against a real loopback HTTP server: retries, refusals, hangs, deadlines."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest

from openbell.errors import HttpError
from openbell.secrets import register
from openbell.tasks.connectors.http import HttpClient, HttpResult
from tests.fixtures.services import free_port

T = TypeVar("T")


class _Server:
    """A loopback server whose paths misbehave on purpose."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.peers: set[tuple[str, int]] = set()
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so pooling is observable

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(
                self,
                status: int,
                body: bytes,
                ctype: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                server.hits[self.path] += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/echo":
                    self._send(200, json.dumps({"got": json.loads(body)}).encode())
                else:
                    self._send(503, b"busy", "text/plain")

            def do_GET(self) -> None:
                server.hits[self.path] += 1
                server.peers.add(self.client_address)
                n = server.hits[self.path]
                if self.path == "/health":
                    self._send(200, json.dumps({"status": "ok", "version": "7.2.0"}).encode())
                elif self.path.startswith("/flaky/"):
                    if n <= 2:
                        self._send(503, b"warming up", "text/plain")
                    else:
                        self._send(200, b'{"status": "ok"}')
                elif self.path == "/down":
                    self._send(503, b"<html>Service Unavailable</html>", "text/html")
                elif self.path == "/missing":
                    self._send(404, b"no such endpoint", "text/plain")
                elif self.path == "/redirect":
                    self._send(302, b"", "text/plain", {"Location": "/login"})
                elif self.path == "/big":
                    self._send(200, b"x" * 50_000, "text/plain")
                elif self.path == "/hang":
                    server.release.wait(30)
                else:
                    self._send(500, b"unexpected path", "text/plain")

        return Handler

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    srv.start()
    yield srv
    srv.stop()


def fast_client(**kw: Any) -> HttpClient:
    """A client with millisecond backoff, so retry tests take no time."""
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.02)
    kw.setdefault("rng", random.Random(7))
    return HttpClient(**kw)


def run(make: Callable[[HttpClient], Awaitable[T]], client: HttpClient | None = None) -> T:
    """Run one coroutine against a client and close the client on the same loop."""
    http = client or fast_client()

    async def main() -> T:
        async with http:
            return await make(http)

    return asyncio.run(main())


def test_ok_returns_status_json_and_text(server: _Server) -> None:
    answer = run(lambda h: h.get(f"{server.base}/health", target="apac-refdata@app1"))
    assert isinstance(answer, HttpResult)
    assert answer.status == 200
    assert answer.json == {"status": "ok", "version": "7.2.0"}
    assert '"version"' in answer.text
    assert answer.attempts == 1
    assert answer.elapsed_s >= 0


def test_503_twice_then_200_is_retried(server: _Server) -> None:
    answer = run(lambda h: h.get(f"{server.base}/flaky/a", target="feed", retries=2))
    assert answer.status == 200
    assert answer.attempts == 3
    assert server.hits["/flaky/a"] == 3


def test_503_beyond_the_retries_names_status_body_and_attempts(server: _Server) -> None:
    with pytest.raises(HttpError) as err:
        run(lambda h: h.get(f"{server.base}/flaky/b", target="feed-x", retries=1))
    msg = str(err.value)
    assert msg.startswith(f"feed-x: GET {server.base}/flaky/b: 503 Service Unavailable: warming up")
    assert "after 2 attempt(s)" in msg
    assert err.value.target == "feed-x"
    assert server.hits["/flaky/b"] == 2


def test_404_is_not_retried(server: _Server) -> None:
    with pytest.raises(HttpError) as err:
        run(lambda h: h.get(f"{server.base}/missing", target="oms@app1", retries=5))
    assert "404 Not Found: no such endpoint" in str(err.value)
    assert "after 1 attempt(s)" in str(err.value)
    assert server.hits["/missing"] == 1


def test_redirect_is_reported_not_followed(server: _Server) -> None:
    with pytest.raises(HttpError, match="302 Found"):
        run(lambda h: h.get(f"{server.base}/redirect", target="oms@app1"))
    assert server.hits["/login"] == 0


def test_hanging_server_times_out_without_retry(server: _Server) -> None:
    client = fast_client(read_timeout_s=0.3)
    with pytest.raises(HttpError) as err:
        run(lambda h: h.get(f"{server.base}/hang", target="risk@app1", retries=3), client)
    assert "read timed out" in str(err.value)
    assert "after 1 attempt(s)" in str(err.value)
    assert server.hits["/hang"] == 1


def test_whole_call_is_bounded_by_the_deadline(server: _Server) -> None:
    client = fast_client(read_timeout_s=30)
    with pytest.raises(HttpError, match=r"no answer within the 0\.4 s deadline"):
        run(lambda h: h.get(f"{server.base}/hang", target="risk@app1", timeout=0.4), client)


def test_retries_stop_when_the_deadline_leaves_no_time(server: _Server) -> None:
    client = fast_client(backoff_base_s=5, backoff_max_s=5, rng=random.Random(1))
    with pytest.raises(HttpError, match="deadline leaves no time to retry"):
        run(
            lambda h: h.get(f"{server.base}/down", target="oms@app1", timeout=0.5, retries=5),
            client,
        )
    assert server.hits["/down"] == 1


def test_post_sends_json_and_returns_the_answer(server: _Server) -> None:
    body = {"trade_date": "2026-11-27", "tif": ["DAY"]}
    answer = run(lambda h: h.post(f"{server.base}/echo", body, target="amer-oms"))
    assert answer.status == 200 and answer.json == {"got": body}


def test_post_is_not_retried_on_a_5xx_the_server_may_have_acted(server: _Server) -> None:
    with pytest.raises(HttpError) as err:
        run(lambda h: h.post(f"{server.base}/sweep", {}, target="amer-oms", retries=3))
    assert "503" in str(err.value) and "after 1 attempt(s)" in str(err.value)
    assert str(err.value).count("POST") == 1
    assert server.hits["/sweep"] == 1


def test_post_retries_a_refused_connect_nothing_was_sent() -> None:
    url = f"http://127.0.0.1:{free_port()}/sweep"
    with pytest.raises(HttpError) as err:
        run(lambda h: h.post(url, {}, target="amer-oms", retries=2))
    assert "connection failed" in str(err.value) and "after 3 attempt(s)" in str(err.value)


def test_connection_refused_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    with pytest.raises(HttpError) as err:
        run(lambda h: h.get(url, target="algo@gw1", retries=2))
    assert "connection failed" in str(err.value)
    assert "after 3 attempt(s)" in str(err.value)


def test_connect_timeout_is_retried() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if len(calls) < 3:
            raise httpx.ConnectTimeout("timed out", request=request)
        return httpx.Response(200, json={"status": "ok"})

    client = fast_client(transport=httpx.MockTransport(handler))
    answer = run(lambda h: h.get("http://refdata.test/health", target="refdata"), client)
    assert answer.attempts == 3
    assert answer.json == {"status": "ok"}


def test_connection_lost_mid_answer_is_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    client = fast_client(transport=httpx.MockTransport(handler))
    with pytest.raises(HttpError, match="connection lost"):
        run(lambda h: h.get("http://refdata.test/health", target="refdata"), client)
    assert calls == 1


def test_large_body_is_capped_and_not_parsed(server: _Server) -> None:
    client = fast_client(max_text=100, max_body_bytes=10_000)
    answer = run(lambda h: h.get(f"{server.base}/big", target="big"), client)
    assert len(answer.text) == 100
    assert answer.json is None


def test_connections_are_pooled_within_a_run(server: _Server) -> None:
    async def twice(h: HttpClient) -> list[HttpResult]:
        return [await h.get(f"{server.base}/health", target="a") for _ in range(3)]

    answers = run(twice)
    assert [a.status for a in answers] == [200, 200, 200]
    assert len(server.peers) == 1  # one TCP connection served all three


def test_secret_in_url_never_reaches_errors_or_logs(
    server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-s3cr3t+++$"
    register(token)
    caplog.set_level(logging.DEBUG, logger="openbell.tasks.connectors.http")
    with pytest.raises(HttpError) as err:
        run(lambda h: h.get(f"{server.base}/missing?token={token}", target="feed"))
    assert token not in str(err.value)
    assert "token=***" in str(err.value)
    assert token not in caplog.text
