"""Secret references and redaction by value.

A secret is named in the estate (``url_secret: OMS_DB_URL``) and resolved at the last
moment from the environment or a Prefect Secret block. Every resolved value is
registered here so that ``redact`` removes it from any text that leaves the process:
logs, reports, Slack messages, outcomes.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, cast

from pydantic import SecretStr

from openbell.errors import OpenbellError

log = logging.getLogger(__name__)

MASK = "***"
_lock = threading.Lock()
_values: set[str] = set()


class SecretNotFoundError(OpenbellError):
    """A secret reference that neither the environment nor Prefect can resolve."""


def register(value: str) -> None:
    """Remember a secret value so that ``redact`` masks it everywhere, in every encoding it
    takes on the way out: as is, JSON-escaped (a ``"`` or ``\\`` in it), URL-encoded (in
    a database URL or a query string)."""
    if value and len(value) >= 4:
        import json
        from urllib.parse import quote, quote_plus

        forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
        forms |= {quote(value, safe=""), quote_plus(value), quote(value)}
        with _lock:
            _values.update(f for f in forms if len(f) >= 4)


def redact(text: str) -> str:
    """Replace every registered secret value in ``text`` with ``***``.

    Matching is literal (no regex), so values with metacharacters are safe.

    Example:
        >>> register("hunter2+++$")
        >>> redact("password=hunter2+++$;")
        'password=***;'
    """
    if not text:
        return text
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    return text


def resolve(name: str) -> SecretStr:
    """Resolve a secret by name: environment variable first, then a Prefect Secret block.

    Block names are lower-case with dashes (``OMS_DB_URL`` -> ``oms-db-url``).
    """
    value = os.environ.get(name)
    if value is None:
        value = _from_prefect(name)
    if value is None:
        raise SecretNotFoundError(
            f"secret {name!r} is not set: export {name}=... or create a Prefect Secret "
            f"block named {_block_name(name)!r}"
        )
    register(value)
    return SecretStr(value)


def preload(names: list[str]) -> list[str]:
    """Resolve secrets now, so that ``redact`` knows them before any text is written.

    A run calls this first with every secret its region references: a step that fails
    before it resolves its own secret (or a remote command that echoes one) is then
    redacted too. Secrets that cannot be resolved are returned, not raised: the step
    that needs one reports it.
    """
    missing = []
    for name in names:
        try:
            resolve(name)
        except SecretNotFoundError:
            missing.append(name)
    return missing


def _block_name(name: str) -> str:
    return name.lower().replace("_", "-")


def _from_prefect(name: str) -> str | None:
    try:
        from prefect.blocks.system import Secret

        block = cast(Secret[Any], Secret.load(_block_name(name), _sync=True))  # type: ignore[call-arg]
    except Exception as exc:  # no server, no block: not this source
        log.debug("no Prefect secret block for %s: %s", name, type(exc).__name__)
        return None
    value = block.get()
    return value if isinstance(value, str) else str(value)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secret values from every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        red = redact(msg)
        if red != msg:
            record.msg = red
            record.args = None
        return True


_REDACTED_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "openbell")


def install_log_redaction() -> None:
    """Put a RedactingFilter on every handler of the root and Prefect loggers (idempotent).

    Filters on handlers, not loggers: a logger's filters do not see records that
    propagate up from its children, a handler's do. This covers the console and the
    handler that ships run logs to the Prefect server.
    """
    for name in _REDACTED_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
