"""Read-only SQL checks on SQLite and PostgreSQL, with bound parameters and a timeout.

A check is one statement that reads; ``SqlRunner`` makes sure of that twice:

1. **Before sending**, ``why_not_read_only`` lexes the statement the way the database
   will (string literals, quoted identifiers, ``--`` and ``/* */`` comments, and per
   dialect PostgreSQL's ``E'...'`` and ``$tag$...$tag$`` strings or SQLite's
   ``[...]`` and backtick identifiers) and refuses, as ``ReadOnlyViolationError``:

   - anything but ``SELECT``, ``WITH`` or ``VALUES`` (optionally inside parentheses).
     ``EXPLAIN`` is refused too: ``EXPLAIN ANALYZE`` executes its statement, and a
     check has no use for a plan;
   - a second statement (a ``;`` outside literals and comments, other than one at the
     end); a ``;`` inside a string literal is just a character;
   - a write hidden inside a read: ``INSERT``, ``UPDATE``, ``DELETE`` or ``MERGE`` in a
     CTE, ``SELECT ... INTO`` (creates a table), and row locks (``FOR UPDATE``,
     ``FOR SHARE``);
   - a call of a function with side effects a read-only transaction does not stop
     (``pg_terminate_backend``, advisory locks, ``pg_read_file``, large objects,
     ``dblink``, ``set_config``, ...), and any function called by a quoted
     name;
   - unterminated literals and nested ``/*`` comments (dialects disagree on where
     those end, so neither reading is trusted).

2. **In the database**, as defence in depth for what the lexer cannot see (a function
   with side effects, ``nextval``): SQLite is opened through a ``file:...?mode=ro`` URI
   with ``PRAGMA query_only = ON``; PostgreSQL runs every check in a transaction set
   ``READ ONLY`` with ``SET LOCAL statement_timeout`` and ``standard_conforming_strings``
   (so the server reads backslashes in literals exactly as the lexer did), and the
   transaction is always rolled back. Production databases should still be reached
   with a role that can only read.

Timeouts: PostgreSQL's ``statement_timeout``; on SQLite a progress handler that
interrupts the statement once its deadline passes. Both raise ``SqlTimeoutError``.

Errors name the database, the check and the database's own message; a password in
the URL is registered with ``openbell.secrets`` and never shown.

Values are bound as ``:name`` (SQLAlchemy ``text()``); SQLAlchemy does not look inside
string literals, so a literal colon followed by a word (``' :x'``) must be written ``\\:``.

Example:
    >>> runner = SqlRunner("apac-oms", "sqlite:///:memory:", timeout_s=5)
    >>> runner.scalar("SELECT :a + 1", {"a": 41})
    42
    >>> why_not_read_only("SELECT 1; DELETE FROM orders")
    "more than one statement (a ';' outside a string literal or comment)"
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from openbell.errors import ReadOnlyViolationError, SqlError, SqlTimeoutError
from openbell.runbooks.schema import SqlCheck
from openbell.secrets import redact, register

log = logging.getLogger(__name__)

_LEADING_WORDS = {"SELECT", "WITH", "VALUES"}
_WRITE_WORDS = {"INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "INTO"}
_WORD = re.compile(r"[^\W\d][\w$]*")
_ROW_LOCK = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+|KEY\s+)?(?:UPDATE|SHARE)\b", re.IGNORECASE)
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")
#: Functions whose side effects a READ ONLY transaction does not stop: ending or
#: signalling other sessions, advisory locks (a session lock outlives the check on a
#: pooled connection), the server's files, large objects, other connections (dblink),
#: notifications, session settings, replication and WAL control. (``nextval`` and other
#: writes the READ ONLY transaction refuses; ``pg_sleep`` ends at the statement timeout.)
_SIDE_EFFECT_CALL = re.compile(
    r"\b(pg_terminate_backend|pg_cancel_backend|pg_signal_backend|pg_(?:try_)?advisory_\w+"
    r"|pg_read_(?:binary_)?file|pg_ls_\w+|pg_stat_file|pg_file_\w+|lo_\w+|dblink\w*"
    r"|pg_notify|set_config|pg_reload_conf|pg_rotate_logfile|pg_switch_wal"
    r"|pg_promote|pg_create_\w+|pg_drop_replication_slot|pg_logical_emit_message)\s*\(",
    re.IGNORECASE,
)
_QUOTED_CALL = re.compile(r'""\s*\(')

_engines: dict[tuple[str, float], Engine] = {}
_engines_lock = threading.Lock()


# --------------------------------------------------------------------------- the lexer
def why_not_read_only(sql: str, dialect: str = "postgresql") -> str | None:
    """Why ``sql`` is not a single read-only statement, or None when it is.

    Args:
        sql: the statement.
        dialect: ``postgresql`` or ``sqlite``; selects the quoting rules.

    Example:
        >>> why_not_read_only("SELECT ';' AS semicolon;") is None
        True
        >>> why_not_read_only("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d")
        'DELETE is not allowed in a read-only check'
        >>> why_not_read_only("DROP TABLE orders")
        'DROP statements are not allowed: a check must start with SELECT, WITH or VALUES'
    """
    try:
        skeleton = _skeleton(
            sql, postgres=dialect.startswith("postgres"), sqlite=dialect.startswith("sqlite")
        )
    except ValueError as exc:
        return str(exc)
    body = skeleton.strip()
    if body.endswith(";"):
        body = body[:-1].rstrip()
    if ";" in body:
        return "more than one statement (a ';' outside a string literal or comment)"
    if not body:
        return "empty statement"
    first = _WORD.match(body.lstrip("( \t\r\n"))
    if first is None:
        return "a check must start with SELECT, WITH or VALUES"
    if first.group().upper() not in _LEADING_WORDS:
        return (
            f"{first.group().upper()} statements are not allowed: "
            "a check must start with SELECT, WITH or VALUES"
        )
    for match in _WORD.finditer(body):
        word = match.group().upper()
        if word in _WRITE_WORDS:
            return f"{word} is not allowed in a read-only check"
    if _ROW_LOCK.search(body):
        return "row locks (FOR UPDATE / FOR SHARE) are not allowed in a read-only check"
    call = _SIDE_EFFECT_CALL.search(body)
    if call:
        return f"{call.group(1).lower()}() has side effects: not allowed in a read-only check"
    if _QUOTED_CALL.search(body):
        return "a function called by a quoted name is not allowed (its name cannot be checked)"
    return None


def _skeleton(sql: str, *, postgres: bool, sqlite: bool) -> str:
    """``sql`` with literals, quoted identifiers and comments blanked out.

    Literals become ``''``, quoted identifiers ``""``, comments a space, so that what
    is left is only the statement's structure: keywords, names, operators, ``;``.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated /* comment")
            if "/*" in sql[i + 2 : end]:
                raise ValueError(
                    "nested /* comments are refused: dialects disagree on where they end"
                )
            i = end + 2
            out.append(" ")
        elif c == "'":
            escapes = postgres and _is_escape_string_prefix(sql, i)
            i = _end_of_quoted(sql, i, "'", backslash_escapes=escapes, what="string literal")
            out.append("''")
        elif c == '"' or (sqlite and c == "`"):
            i = _end_of_quoted(sql, i, c, backslash_escapes=False, what="quoted identifier")
            out.append('""')
        elif sqlite and c == "[":
            end = sql.find("]", i + 1)
            if end < 0:
                raise ValueError("unterminated [quoted identifier]")
            i = end + 1
            out.append('""')
        elif postgres and c == "$" and (i == 0 or not _is_ident_char(sql[i - 1])):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is None:  # $1: a positional parameter
                out.append(c)
                i += 1
                continue
            end = sql.find(tag.group(), tag.end())
            if end < 0:
                raise ValueError(f"unterminated dollar-quoted string {tag.group()}")
            i = end + len(tag.group())
            out.append("''")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c in "_$"


def _is_escape_string_prefix(sql: str, quote_at: int) -> bool:
    """PostgreSQL ``E'...'``: an E right before the quote that is not part of a name."""
    if quote_at == 0 or sql[quote_at - 1] not in "eE":
        return False
    return quote_at == 1 or not _is_ident_char(sql[quote_at - 2])


def _end_of_quoted(sql: str, start: int, q: str, *, backslash_escapes: bool, what: str) -> int:
    """Index just past the quote closing the literal opened at ``start``."""
    i, n = start + 1, len(sql)
    while i < n:
        c = sql[i]
        if backslash_escapes and c == "\\":
            i += 2
        elif c == q:
            if i + 1 < n and sql[i + 1] == q:  # a doubled quote is one quote character
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise ValueError(f"unterminated {what}")


# --------------------------------------------------------------------------- the runner
@dataclass(frozen=True)
class CheckResult:
    """One SQL check's answer.

    Attributes:
        name: the check's name.
        value: the first column of the first row (None when no rows); a ``Decimal``
            becomes an ``int`` or ``float`` so that results serialise as numbers.
        expected: the expectation in words, e.g. ``>= 1``.
        passed: whether the value meets the expectation.
        sql: the statement that ran.
    """

    name: str
    value: Any
    expected: str
    passed: bool
    sql: str


class SqlRunner:
    """Runs read-only statements on one database (SQLite or PostgreSQL).

    Args:
        name: the database's name in the estate, used in errors and logs.
        url: a SQLAlchemy URL, e.g. ``sqlite:///path/oms.db`` or
            ``postgresql://user:pass@host/db`` (``postgresql`` means psycopg 3). A
            password in it, or the whole URL when given as ``SecretStr``, is
            registered for redaction.
        timeout_s: limit for each statement (and for connecting).

    Raises:
        SqlError: the URL cannot be parsed or names a database other than SQLite or
            PostgreSQL, for which read-only cannot be enforced.

    Example:
        >>> runner = SqlRunner("emea-oms", "sqlite:///:memory:", timeout_s=2)
        >>> runner.rows("VALUES (1, 'a'), (2, 'b')")
        [{'column1': 1, 'column2': 'a'}, {'column1': 2, 'column2': 'b'}]
    """

    def __init__(self, name: str, url: str | SecretStr, *, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        raw = url.get_secret_value() if isinstance(url, SecretStr) else url
        if isinstance(url, SecretStr):
            register(raw)
        try:
            parsed = make_url(raw)
        except ArgumentError:
            raise SqlError(
                name,
                "parse the database URL",
                "not a SQLAlchemy URL (dialect://user:password@host/database)",
            ) from None
        if parsed.password:
            register(str(parsed.password))
            register(quote(str(parsed.password), safe=""))
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            self._url = _read_only_sqlite_url(parsed)
        elif self.dialect == "postgresql":
            self._url = (
                parsed.set(drivername="postgresql+psycopg")
                if parsed.drivername == "postgresql"
                else parsed
            )
        else:
            raise SqlError(
                name,
                "open the database",
                f"dialect {self.dialect!r} is not supported (SQLite or PostgreSQL)",
            )
        self._engine = _engine_for(self._url, timeout_s)

    def __repr__(self) -> str:
        return f"SqlRunner({self.name!r}, {self._url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close the pooled connections (the engine stays usable and reconnects)."""
        self._engine.dispose()

    # ---------------------------------------------------------------------- queries
    def scalar(
        self, sql: str, params: Mapping[str, Any] | None = None, *, check: str | None = None
    ) -> Any:
        """The first column of the first row, or None when there are no rows.

        Args:
            sql: one read-only statement; values are bound as ``:name``.
            params: the bound values.
            check: the check's name, for errors and logs.

        Raises:
            ReadOnlyViolationError: the statement is not a single read, or the database
                refused a write.
            SqlTimeoutError: the statement ran longer than ``timeout_s``.
            SqlError: any other database error (connection, syntax, missing table).

        Example:
            >>> SqlRunner("db", "sqlite://", timeout_s=1).scalar("SELECT 'a' || :b", {"b": "c"})
            'ac'
        """
        _keys, rows = self._run(sql, params or {}, check=check, max_rows=1)
        return rows[0][0] if rows and rows[0] else None

    def rows(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        max_rows: int = 1000,
        *,
        check: str | None = None,
    ) -> list[dict[str, Any]]:
        """At most ``max_rows`` rows as dicts; a WARNING is logged when there were more.

        Raises the same errors as ``scalar``.

        Example:
            >>> SqlRunner("db", "sqlite://", timeout_s=1).rows("SELECT 1 AS n")
            [{'n': 1}]
        """
        keys, rows = self._run(sql, params or {}, check=check, max_rows=max_rows)
        if len(rows) > max_rows:
            log.warning(
                "%s: %s returned more than %d rows; only the first %d are kept",
                self.name,
                check or "query",
                max_rows,
                max_rows,
            )
            rows = rows[:max_rows]
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def privileges(self) -> list[str]:
        """What the checks' database user could do beyond reading, one sentence each
        (empty when it can only read). Every statement still runs read-only; this says
        whether the role is the read-only one the README documents.

        SQLite is opened read-only (``mode=ro``): nothing to say. PostgreSQL: a superuser
        (``pg_read_file``, ``COPY ... TO PROGRAM``), or any table it may write.

        Raises the same errors as ``scalar``.
        """
        if self.dialect != "postgresql":
            return []
        row = self.rows(_PRIVILEGES, check="privileges")[0]
        found = []
        if row["superuser"]:
            found.append(f"{row['who']} is a superuser: it can read files and run programs")
        if row["writable"]:
            some = ", ".join(str(t) for t in (row["sample"] or []))
            found.append(
                f"{row['who']} may write {row['writable']} table(s) (e.g. {some}); a role "
                "with SELECT only is the documented way"
            )
        return found

    @contextmanager
    def read_only_connection(self) -> Iterator[Connection]:
        """A connection inside a read-only transaction, rolled back when done.

        This is the database half of the guard; ``scalar`` and ``rows`` run the lexer
        first and then use it. PostgreSQL: ``READ ONLY`` transaction with
        ``statement_timeout``. SQLite: ``mode=ro`` and ``query_only`` (set on connect).

        Example:
            >>> with SqlRunner("db", "sqlite://", timeout_s=1).read_only_connection() as conn:
            ...     conn.exec_driver_sql("SELECT 1").scalar()
            1
        """
        with self._engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.execute(
                    text(
                        "SELECT set_config('statement_timeout', :ms, true), "
                        "set_config('standard_conforming_strings', 'on', true)"
                    ),
                    {"ms": f"{max(1, round(self.timeout_s * 1000))}ms"},
                )
            try:
                yield conn
            finally:
                conn.rollback()

    def _run(
        self, sql: str, params: Mapping[str, Any], *, check: str | None, max_rows: int
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        action = redact(_action(check, sql))
        problem = why_not_read_only(sql, self.dialect)
        if problem:
            log.info("%s: %s refused before sending: %s", self.name, check or "query", problem)
            raise ReadOnlyViolationError(self.name, action, problem)
        started = time.perf_counter()
        deadline = _Deadline(self.timeout_s)
        try:
            with self.read_only_connection() as conn, deadline.watch(conn, self.dialect):
                streaming = conn.execution_options(stream_results=True)
                result = streaming.execute(text(sql), dict(params))
                if not result.returns_rows:
                    raise ReadOnlyViolationError(self.name, action, "it returned no rows")
                keys = list(result.keys())
                rows = [tuple(row) for row in result.fetchmany(max_rows + 1)]
                result.close()
        except DBAPIError as exc:
            raise self._translate(exc, action, deadline) from None
        except SQLAlchemyError as exc:  # e.g. a bound parameter without a value
            raise SqlError(self.name, action, redact(_first_line(str(exc)))) from None
        elapsed = time.perf_counter() - started
        kept = min(len(rows), max_rows)
        log.info("%s: %s -> %d row(s) in %.3f s", self.name, check or "query", kept, elapsed)
        return keys, rows

    def _translate(self, exc: DBAPIError, action: str, deadline: _Deadline) -> SqlError:
        orig = exc.orig
        message = redact(_db_message(orig))
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        log.info("%s: %s failed: %s", self.name, action, message)
        if code == "57014" or (code == "SQLITE_INTERRUPT" and deadline.fired):
            answer = f"timed out after {self.timeout_s:g} s: {message}"
            return SqlTimeoutError(self.name, action, answer)
        if code in ("25006", "SQLITE_READONLY"):
            return ReadOnlyViolationError(self.name, action, f"refused by the database: {message}")
        return SqlError(self.name, action, message)


#: What the current PostgreSQL role could do beyond reading.
_PRIVILEGES = """
SELECT current_user AS who,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
       count(*) AS writable,
       (array_agg(n.nspname || '.' || c.relname ORDER BY n.nspname, c.relname))[1:3] AS sample
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
"""


def run_check(runner: SqlRunner, check: SqlCheck, params: Mapping[str, Any]) -> CheckResult:
    """Run one estate check and judge its value against the expectation.

    Args:
        runner: the database's runner.
        check: the check (its SQL binds ``:trade_date`` and ``:prev_trade_date``).
        params: the bound values.

    Returns:
        The value, the expectation in words and whether it holds. A value that cannot be
        compared (text where a number is expected) does not pass.

    Raises:
        ReadOnlyViolationError, SqlTimeoutError, SqlError: as ``SqlRunner.scalar``.

    Example:
        >>> from openbell.runbooks.schema import Expectation
        >>> check = SqlCheck(name="one", step="batch", sql="SELECT 1", expect=Expectation(max=0))
        >>> run_check(SqlRunner("db", "sqlite://", timeout_s=1), check, {}).passed
        False
    """
    value = _plain(runner.scalar(check.sql, params, check=check.name))
    try:
        passed = check.expect.holds(value)
    except (TypeError, ValueError):
        passed = False
    return CheckResult(
        name=check.name, value=value, expected=check.expect.describe(), passed=passed, sql=check.sql
    )


def dispose_all() -> None:
    """Close every cached engine's connections (end of process, tests)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


atexit.register(dispose_all)  # pooled PostgreSQL connections say goodbye to the server


# --------------------------------------------------------------------------- helpers
class _Deadline:
    """SQLite's statement timeout: a progress handler that interrupts past the deadline."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.fired = False

    @contextmanager
    def watch(self, conn: Connection, dialect: str) -> Iterator[None]:
        if dialect != "sqlite":  # PostgreSQL enforces statement_timeout itself
            yield
            return
        raw = conn.connection.driver_connection
        ends = time.monotonic() + self.timeout_s

        def progress() -> int:
            if time.monotonic() > ends:
                self.fired = True
                return 1  # non-zero interrupts the statement
            return 0

        raw.set_progress_handler(progress, 10_000)  # type: ignore[union-attr]
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)  # type: ignore[union-attr]


def _read_only_sqlite_url(url: URL) -> URL:
    """The same database opened read-only: ``file:<path>?mode=ro`` with ``uri=true``.

    An in-memory database cannot be opened read-only; it still gets ``query_only``.
    """
    database = url.database or ""
    if database in ("", ":memory:"):
        return url.set(drivername="sqlite+pysqlite")
    query = dict(url.query)
    if str(query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        query["mode"] = "ro"
        return url.set(drivername="sqlite+pysqlite", query=query)
    path = Path(database).expanduser().absolute()
    query.update({"mode": "ro", "uri": "true"})
    return url.set(drivername="sqlite+pysqlite", database=f"file:{quote(str(path))}", query=query)


def _engine_for(url: URL, timeout_s: float) -> Engine:
    """One engine per URL (and connect timeout), shared by every runner of the process."""
    key = (url.render_as_string(hide_password=False), timeout_s)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create_engine(url, timeout_s)
            _engines[key] = engine
    return engine


def _create_engine(url: URL, timeout_s: float) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": timeout_s})

        @event.listens_for(engine, "connect")
        def _query_only(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA query_only = ON")

        return engine
    return create_engine(
        url,
        pool_size=4,
        max_overflow=4,
        pool_timeout=max(timeout_s, 5.0),
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": max(1, round(timeout_s)), "application_name": "openbell"},
    )


def _action(check: str | None, sql: str) -> str:
    one_line = " ".join(sql.split())
    if len(one_line) > 80:
        one_line = one_line[:79] + "…"
    return f"check {check} ({one_line})" if check else f"query ({one_line})"


def _db_message(orig: BaseException | None) -> str:
    """The database's own message: PostgreSQL's primary message, else the first line."""
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return str(primary) if primary else _first_line(str(orig))


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "(no message)"


def _plain(value: Any) -> Any:
    """Decimals as int or float, so a check's value serialises as a number."""
    if isinstance(value, Decimal):
        integral = value.is_finite() and value == value.to_integral_value()
        return int(value) if integral else float(value)
    return value
