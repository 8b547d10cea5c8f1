"""HTTP for health endpoints, feed status documents and admin APIs, with bounded retries.

One ``HttpClient`` serves a whole run: it pools connections (one ``httpx.AsyncClient``
per event loop, since pooled sockets belong to the loop that opened them) and applies
explicit connect and read timeouts.

Retry policy, following "retry only what is safe to repeat" and "an ambiguous outcome is
not blindly re-run":

========================================  ==========================================
what happened                             what ``get`` does
========================================  ==========================================
2xx                                       returns an ``HttpResult``
connect refused / connect timeout         retries, exponential backoff, full jitter
5xx                                       retries, exponential backoff, full jitter
3xx, 4xx                                  raises ``HttpError`` at once
read timeout, connection lost mid-answer  raises ``HttpError`` at once
the call's deadline passes                raises ``HttpError`` (no attempt outlives it)
========================================  ==========================================

``post`` sends a JSON body and retries only a failed connect (the request never left),
never a 5xx or a timeout: the effect of those is unknown and is settled by reading state.

Redirects are not followed: a health URL that redirects (say to a login page) is a
misconfiguration to report, not to chase.

Example:
    Inside a coroutine::

        async with HttpClient() as http:
            answer = await http.get("http://127.0.0.1:42301/health", target="apac-refdata")
            answer.status, answer.json  # 200, {'status': 'ok', 'version': '7.2.0'}
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from openbell.errors import HttpError
from openbell.secrets import redact

log = logging.getLogger(__name__)

_RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class HttpResult:
    """What a successful GET brought back.

    Attributes:
        status: the HTTP status code (2xx).
        json: the body parsed as JSON, or None when it is not JSON (or was truncated).
        text: the body as text, cut to the client's ``max_text`` characters.
        elapsed_s: seconds from the first attempt to the answer, backoff included.
        attempts: how many requests were sent (1 when the first one succeeded).
    """

    status: int
    json: Any | None
    text: str
    elapsed_s: float
    attempts: int


class HttpClient:
    """A pooled async HTTP client for one run.

    Args:
        connect_timeout_s: limit for establishing a connection.
        read_timeout_s: limit between bytes of the answer.
        deadline_s: default limit for a whole ``get``, retries and backoff included.
        backoff_base_s: first backoff ceiling; it doubles per retry (full jitter picks
            a delay uniformly between 0 and the ceiling).
        backoff_max_s: the largest backoff ceiling.
        max_text: characters of the body kept in ``HttpResult.text``.
        max_body_bytes: bytes read at most; a longer body is cut and not parsed as JSON.
        transport: an httpx transport, for tests (``httpx.MockTransport``).
        rng: random source for the jitter, for tests.

    Example:
        >>> http = HttpClient(connect_timeout_s=1, read_timeout_s=2, deadline_s=5)
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        deadline_s: float = 15.0,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 2.0,
        max_text: int = 4_000,
        max_body_bytes: int = 1_000_000,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.deadline_s = deadline_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_text = max_text
        self.max_body_bytes = max_body_bytes
        self._transport = transport
        self._rng = rng or random.Random()
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections of the current event loop's client.

        Clients made on other loops are dropped: their sockets belong to those loops.
        """
        loop = asyncio.get_running_loop()
        clients, self._clients = self._clients, {}
        for owner, client in clients.items():
            if owner is loop:
                await client.aclose()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                follow_redirects=False,
                headers={"User-Agent": "openbell"},
                transport=self._transport,
            )
            self._clients[loop] = client
        return client

    async def get(
        self, url: str, *, target: str, timeout: float | None = None, retries: int = 2
    ) -> HttpResult:
        """GET ``url``, retrying connect failures and 5xx within a deadline.

        Args:
            url: the URL to fetch.
            target: what the URL belongs to (app@host, feed name), for errors and logs.
            timeout: deadline for the whole call in seconds, retries included;
                defaults to the client's ``deadline_s``.
            retries: retries after the first attempt (so at most ``retries + 1`` requests).

        Returns:
            The 2xx answer.

        Raises:
            HttpError: names the target, ``GET <url>`` and what came back: the status
                and the start of the body, or the transport error, and the attempts made.

        Example:
            Inside a coroutine::

                answer = await http.get(feed.status_url, target="emea-equities", timeout=3)
                answer.json["last_update"]  # '2026-11-26T08:00:00Z'
        """
        return await self._request("GET", url, None, target, timeout, retries, retry_5xx=True)

    async def post(
        self,
        url: str,
        body: Any,
        *,
        target: str,
        timeout: float | None = None,
        retries: int = 2,
    ) -> HttpResult:
        """POST ``body`` as JSON; retry only connects that failed (nothing was sent).

        Args:
            url: the URL.
            body: a JSON-ready value.
            target: what the URL belongs to, for errors and logs.
            timeout: deadline for the whole call, retries included.
            retries: retries of a refused or timed-out connect.

        Raises:
            HttpError: as ``get``; a 5xx or a read timeout is not retried, because the
                server may have acted.

        Example:
            Inside a coroutine::

                await http.post(f"{base}/cancel-sweep", {"trade_date": "2026-11-27"},
                                target="amer-oms")
        """
        return await self._request("POST", url, body, target, timeout, retries, retry_5xx=False)

    async def _request(
        self,
        method: str,
        url: str,
        body: Any,
        target: str,
        timeout: float | None,
        retries: int,
        *,
        retry_5xx: bool,
    ) -> HttpResult:
        loop = asyncio.get_running_loop()
        deadline = timeout if timeout is not None else self.deadline_s
        started = loop.time()
        ends = started + deadline
        action = f"{method} {redact(url)}"
        attempts = 0
        while True:
            attempts += 1
            try:
                status, reason, text, parsed = await self._attempt(
                    url, ends - loop.time(), method, body
                )
            except _RETRYABLE_ERRORS as exc:
                problem = _describe(exc)
            except TimeoutError:  # the call's deadline, not one of httpx's timeouts
                raise self._fail(
                    target,
                    action,
                    started,
                    attempts,
                    f"no answer within the {deadline:g} s deadline",
                ) from None
            except httpx.TimeoutException as exc:
                raise self._fail(target, action, started, attempts, _describe(exc)) from exc
            except httpx.HTTPError as exc:
                raise self._fail(target, action, started, attempts, _describe(exc)) from exc
            else:
                if 200 <= status < 300:
                    elapsed = loop.time() - started
                    log.info(
                        "%s %s (%s) -> %d in %.3f s, %d attempt(s)",
                        method,
                        redact(url),
                        target,
                        status,
                        elapsed,
                        attempts,
                    )
                    return HttpResult(status, parsed, text, elapsed, attempts)
                body = _snippet(text)
                problem = f"{status} {reason}: {body}" if body else f"{status} {reason}"
                if status < 500 or not retry_5xx:
                    raise self._fail(target, action, started, attempts, problem)
            if attempts > retries:
                raise self._fail(target, action, started, attempts, problem)
            delay = self._rng.uniform(
                0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempts - 1))
            )
            if loop.time() + delay >= ends:
                raise self._fail(
                    target,
                    action,
                    started,
                    attempts,
                    f"{problem}; the {deadline:g} s deadline leaves no time to retry",
                )
            log.debug(
                "%s %s (%s): %s; retrying in %.3f s", method, redact(url), target, problem, delay
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, url: str, remaining: float, method: str = "GET", body: Any = None
    ) -> tuple[int, str, str, Any | None]:
        """One request, bounded by ``remaining`` seconds: (status, reason, text, json)."""
        if remaining <= 0:
            raise TimeoutError
        per_try = httpx.Timeout(
            min(self.read_timeout_s, remaining), connect=min(self.connect_timeout_s, remaining)
        )
        async with asyncio.timeout(remaining):
            payload = {} if method == "GET" else {"json": body}
            async with self._client().stream(method, url, timeout=per_try, **payload) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        break
        truncated = len(body) > self.max_body_bytes
        raw = bytes(body[: self.max_body_bytes])
        text = raw.decode(response.encoding or "utf-8", errors="replace")
        parsed: Any | None = None
        if raw and not truncated:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        return response.status_code, response.reason_phrase, text[: self.max_text], parsed

    def _fail(
        self, target: str, action: str, started: float, attempts: int, problem: str
    ) -> HttpError:
        elapsed = asyncio.get_running_loop().time() - started
        answer = redact(f"{problem} (after {attempts} attempt(s), {elapsed:.2f} s)")
        log.info("%s (%s) failed: %s", action, target, answer)
        return HttpError(target, action, answer)


def _describe(exc: httpx.HTTPError) -> str:
    """A transport error in a few words: its kind and the OS's reason when there is one."""
    kinds: dict[type[Exception], str] = {
        httpx.ConnectError: "connection failed",
        httpx.ConnectTimeout: "connect timed out",
        httpx.ReadTimeout: "read timed out",
        httpx.WriteTimeout: "write timed out",
        httpx.PoolTimeout: "no free connection in the pool",
        httpx.RemoteProtocolError: "connection lost or bad answer",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    detail = str(exc).strip()
    return f"{kind}: {detail}" if detail else kind


def _snippet(text: str, limit: int = 200) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
