"""Read-only SQL checks: the lexer, then SQLite (a temp file) and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy.exc
import yaml
from pydantic import SecretStr

from openbell.errors import ReadOnlyViolationError, SqlError, SqlTimeoutError
from openbell.runbooks.schema import Expectation, SqlCheck
from openbell.secrets import redact
from openbell.tasks.connectors.sql import (
    CheckResult,
    SqlRunner,
    dispose_all,
    run_check,
    why_not_read_only,
)
from tests.fixtures.services import free_port

LAB_YAML = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
SLOW_CTE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
CANARY = "s3cr3t+++$\\"


@pytest.fixture(autouse=True, scope="module")
def _close_engines() -> Iterator[None]:
    yield
    dispose_all()


# ----------------------------------------------------------------------------- the lexer
READS = [
    "SELECT 1",
    "select 1;",
    "  SELECT 1 ;  \n",
    "WITH x AS (SELECT 1 AS n) SELECT n FROM x",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3) SELECT * FROM c",
    "VALUES (1, 'a')",
    "(SELECT 1) UNION (SELECT 2)",
    "SELECT ';' AS semicolon",
    "SELECT 'it''s; DELETE FROM t' AS s",
    'SELECT "odd;name" FROM t',
    'SELECT "delete" FROM t',
    "SELECT 1 -- ; DELETE FROM t\n",
    "SELECT /* ; DROP TABLE t */ 1",
    "SELECT replace(name, 'a', 'b'), updated_at, deleted_flag FROM t",
    "SELECT COUNT(*) FROM instruments WHERE trade_date = :trade_date",
    "SELECT x::int FROM t",
]
WRITES = [
    ("INSERT INTO t VALUES (1)", "INSERT statements are not allowed"),
    ("UPDATE t SET a = 1", "UPDATE statements are not allowed"),
    ("DELETE FROM t", "DELETE statements are not allowed"),
    ("DROP TABLE t", "DROP statements are not allowed"),
    ("CREATE TABLE u (a int)", "CREATE statements are not allowed"),
    ("ALTER TABLE t ADD b int", "ALTER statements are not allowed"),
    ("TRUNCATE t", "TRUNCATE statements are not allowed"),
    ("PRAGMA query_only = OFF", "PRAGMA statements are not allowed"),
    ("ATTACH 'x.db' AS x", "ATTACH statements are not allowed"),
    ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN statements are not allowed"),
    ("SET default_transaction_read_only = off", "SET statements are not allowed"),
    ("SELECT 1; DELETE FROM t", "more than one statement"),
    ("SELECT 1; SELECT 2", "more than one statement"),
    ("SELECT 'a;b'; DELETE FROM t; --", "more than one statement"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "DELETE is not allowed"),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM u", "UPDATE is not allowed"),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING a) SELECT 1", "INSERT is not allowed"),
    ("SELECT * INTO t2 FROM t", "INTO is not allowed"),
    ("SELECT * FROM t FOR UPDATE", "UPDATE is not allowed"),
    ("SELECT * FROM t FOR KEY SHARE", "row locks"),
    ("SELECT 'unterminated", "unterminated string literal"),
    ('SELECT "unterminated', "unterminated quoted identifier"),
    ("SELECT 1 /* unterminated", "unterminated /* comment"),
    ("SELECT /* /* */ 1; DELETE FROM t; /* */ 2", "nested /* comments"),
    ("", "empty statement"),
    (" ; ", "empty statement"),
    ("-- just a comment", "empty statement"),
    ("$1", "must start with SELECT"),
    # side effects a READ ONLY transaction lets through
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "pg_terminate_backend() has side"),
    ("SELECT pg_cancel_backend (42)", "pg_cancel_backend() has side effects"),
    ("SELECT pg_catalog.PG_ADVISORY_LOCK(1)", "pg_advisory_lock() has side effects"),
    ("SELECT pg_try_advisory_xact_lock(1)", "pg_try_advisory_xact_lock() has side effects"),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file() has side effects"),
    ("SELECT lo_export(1, '/tmp/x')", "lo_export() has side effects"),
    ("SELECT * FROM dblink('db', 'DELETE FROM t') AS x(a int)", "dblink() has side effects"),
    ("SELECT set_config('search_path', 'evil', false)", "set_config() has side effects"),
    ('SELECT "pg_terminate_backend"(1)', "a function called by a quoted name"),
]


def test_names_that_only_look_like_side_effects_pass() -> None:
    for sql in (
        "SELECT 'pg_terminate_backend(1)' AS quoted",
        "SELECT pg_terminate_backend_count, lower(a) FROM t",
        "SELECT count(*) FROM lo_files -- pg_advisory_lock(1)",
    ):
        assert why_not_read_only(sql) is None, sql


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("sql", READS)
def test_reads_pass_the_lexer(sql: str, dialect: str) -> None:
    assert why_not_read_only(sql, dialect) is None


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize(("sql", "why"), WRITES)
def test_writes_and_several_statements_are_refused(sql: str, why: str, dialect: str) -> None:
    problem = why_not_read_only(sql, dialect)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(
    ("sql", "sqlite_ok", "postgres_ok"),
    [
        # PostgreSQL dollar quotes and E'' strings hide ';' only where PostgreSQL reads them so.
        ("SELECT $$; DELETE FROM t$$", False, True),
        ("SELECT $fn$ ; DROP TABLE t $fn$ AS body", False, True),
        ("SELECT E'\\'; DELETE FROM t; --'", False, True),
        ("SELECT 'a\\'; DELETE FROM t; --'", False, False),
        ("SELECT $1", True, True),
        # SQLite's [identifier] and `identifier` quoting.
        ("SELECT [odd;name] FROM t", True, False),
        ("SELECT `odd;name` FROM t", True, False),
    ],
)
def test_quoting_rules_follow_the_dialect(sql: str, sqlite_ok: bool, postgres_ok: bool) -> None:
    assert (why_not_read_only(sql, "sqlite") is None) is sqlite_ok
    assert (why_not_read_only(sql, "postgresql") is None) is postgres_ok


def test_every_lab_check_passes_the_lexer() -> None:
    estate = yaml.safe_load(LAB_YAML.read_text())
    checks = [c for db in estate["databases"].values() for c in db["checks"]]
    assert checks
    for check in checks:
        assert why_not_read_only(check["sql"], "sqlite") is None, check["name"]
        assert why_not_read_only(check["sql"], "postgresql") is None, check["name"]


# ----------------------------------------------------------------------------- SQLite
def check(sql: str, **expect: float) -> SqlCheck:
    return SqlCheck(name="the_check", step="refdata", sql=sql, expect=Expectation(**expect))


@pytest.fixture
def oms_db(tmp_path: Path) -> Path:
    path = tmp_path / "oms.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE instruments (symbol TEXT, trade_date TEXT, tick_size REAL);
            INSERT INTO instruments VALUES
                ('7203.T', '2026-11-27', 0.5), ('6758.T', '2026-11-27', 1.0),
                ('9984.T', '2026-11-26', 1.0);
        """)
    conn.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def lite(oms_db: Path) -> SqlRunner:
    return SqlRunner("apac-oms", f"sqlite:///{oms_db}", timeout_s=5)


def test_sqlite_check_passes_and_fails(lite: SqlRunner) -> None:
    sql = "SELECT COUNT(*) FROM instruments WHERE trade_date = :trade_date"
    ok = run_check(lite, check(sql, min=1), {"trade_date": "2026-11-27"})
    assert ok == CheckResult(name="the_check", value=2, expected=">= 1", passed=True, sql=sql)
    missing = run_check(lite, check(sql, min=1), {"trade_date": "2026-11-30"})
    assert (missing.value, missing.passed) == (0, False)


def test_sqlite_value_that_cannot_be_compared_does_not_pass(lite: SqlRunner) -> None:
    result = run_check(lite, check("SELECT 'n/a'", max=0), {})
    assert (result.value, result.passed) == ("n/a", False)


def test_sqlite_rows_and_max_rows(lite: SqlRunner, caplog: pytest.LogCaptureFixture) -> None:
    rows = lite.rows("SELECT symbol, tick_size FROM instruments ORDER BY symbol")
    assert rows[0] == {"symbol": "6758.T", "tick_size": 1.0}
    with caplog.at_level(logging.WARNING, logger="openbell.tasks.connectors.sql"):
        assert len(lite.rows("SELECT * FROM instruments", max_rows=2)) == 2
    assert "more than 2 rows" in caplog.text


@pytest.mark.parametrize("attack", ["2026-11-27' OR '1'='1", "x'; DROP TABLE instruments; --"])
def test_sqlite_bound_parameters_stay_literals(lite: SqlRunner, oms_db: Path, attack: str) -> None:
    before = digest(oms_db)
    sql = "SELECT COUNT(*) FROM instruments WHERE trade_date = :trade_date"
    assert lite.scalar(sql, {"trade_date": attack}) == 0
    assert lite.scalar("SELECT COUNT(*) FROM instruments") == 3
    assert digest(oms_db) == before


@pytest.mark.parametrize(("sql", "_why"), [w for w in WRITES if w[0]])
def test_sqlite_refuses_before_sending(lite: SqlRunner, oms_db: Path, sql: str, _why: str) -> None:
    before = digest(oms_db)
    with pytest.raises(ReadOnlyViolationError) as err:
        lite.scalar(sql, check="sneaky")
    assert str(err.value).startswith("apac-oms: check sneaky (")
    assert digest(oms_db) == before


@pytest.mark.parametrize(
    "write",
    [
        "INSERT INTO instruments VALUES ('X', '2026-11-27', 1)",
        "DELETE FROM instruments",
        "CREATE TEMP TABLE scratch (a)",
        "CREATE TABLE scratch (a)",
    ],
)
def test_sqlite_refuses_writes_that_get_past_the_lexer(
    lite: SqlRunner, oms_db: Path, write: str
) -> None:
    before = digest(oms_db)
    with (
        lite.read_only_connection() as conn,
        pytest.raises(sqlalchemy.exc.OperationalError, match="readonly database"),
    ):
        conn.exec_driver_sql(write)
    assert digest(oms_db) == before


def test_sqlite_slow_statement_times_out(oms_db: Path) -> None:
    runner = SqlRunner("apac-oms", f"sqlite:///{oms_db}", timeout_s=0.5)
    with pytest.raises(SqlTimeoutError) as err:
        runner.scalar(SLOW_CTE, check="endless")
    assert "apac-oms: check endless" in str(err.value)
    assert "timed out after 0.5 s" in str(err.value)
    assert runner.scalar("SELECT 1") == 1  # the connection is usable afterwards


def test_sqlite_database_error_names_database_check_and_cause(lite: SqlRunner) -> None:
    with pytest.raises(SqlError) as err:
        run_check(lite, check("SELECT COUNT(*) FROM positions", min=1), {})
    assert type(err.value) is SqlError
    assert str(err.value) == (
        "apac-oms: check the_check (SELECT COUNT(*) FROM positions): no such table: positions"
    )


def test_sqlite_missing_parameter_is_an_error(lite: SqlRunner) -> None:
    with pytest.raises(SqlError, match="trade_date"):
        lite.scalar("SELECT COUNT(*) FROM instruments WHERE trade_date = :trade_date", {})


def test_sqlite_missing_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    runner = SqlRunner("apac-oms", f"sqlite:///{path}", timeout_s=1)
    with pytest.raises(SqlError, match="unable to open database file"):
        runner.scalar("SELECT 1")
    assert not path.exists()


def test_sqlite_wal_database_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (a)")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.commit()
    try:
        assert SqlRunner("wal", f"sqlite:///{path}", timeout_s=1).scalar("SELECT a FROM t") == 1
    finally:
        writer.close()


def test_unsupported_dialect_is_refused() -> None:
    with pytest.raises(SqlError, match="'mysql' is not supported"):
        SqlRunner("legacy", "mysql://u:p@h/db", timeout_s=1)


# ----------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def pg_tables(pg_execute: Callable[[str], None]) -> None:
    pg_execute("""
        CREATE TABLE positions (account text, trade_date date, qty numeric);
        INSERT INTO positions VALUES
            ('ACC1', '2026-11-27', 100.5), ('ACC2', '2026-11-27', 200), ('ACC1', '2026-11-26', 5);
        CREATE SEQUENCE order_ids;
        CREATE FUNCTION sneaky_insert() RETURNS int LANGUAGE sql
            AS 'INSERT INTO positions VALUES (''EVIL'', ''2026-11-27'', 1) RETURNING 1';
    """)


@pytest.fixture
def pg(pg_url: str, pg_tables: None) -> SqlRunner:
    return SqlRunner("amer-oms", pg_url, timeout_s=5)


def pg_count(runner: SqlRunner) -> int:
    return int(runner.scalar("SELECT COUNT(*) FROM positions"))


@pytest.mark.integration
def test_pg_check_passes_and_fails(pg: SqlRunner) -> None:
    sql = "SELECT COUNT(*) FROM positions WHERE trade_date = CAST(:trade_date AS date)"
    assert run_check(pg, check(sql, min=1), {"trade_date": "2026-11-27"}).passed
    empty = run_check(pg, check(sql, min=1), {"trade_date": "2026-11-30"})
    assert (empty.value, empty.passed) == (0, False)


@pytest.mark.integration
def test_pg_numeric_values_are_plain_numbers(pg: SqlRunner) -> None:
    total = check("SELECT SUM(qty) FROM positions WHERE account = 'ACC1'", min=1)
    result = run_check(pg, total, {})
    assert result.value == 105.5
    assert isinstance(result.value, float)
    # rows() keeps the driver's exact types: prices and quantities stay Decimal.
    assert pg.rows("SELECT account, qty FROM positions WHERE qty = 200") == [
        {"account": "ACC2", "qty": Decimal(200)}
    ]


@pytest.mark.integration
def test_pg_bound_parameters_stay_literals(pg: SqlRunner) -> None:
    attack = "ACC1'; DELETE FROM positions; --"
    assert pg.scalar("SELECT COUNT(*) FROM positions WHERE account = :a", {"a": attack}) == 0
    assert pg_count(pg) == 3


@pytest.mark.integration
@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM positions",
        "DROP TABLE positions",
        "SELECT 1; DELETE FROM positions",
        "WITH d AS (DELETE FROM positions RETURNING *) SELECT COUNT(*) FROM d",
        "SELECT * INTO stolen FROM positions",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
        "SELECT pg_advisory_lock(4711)",
    ],
)
def test_pg_refuses_before_sending(pg: SqlRunner, sql: str) -> None:
    with pytest.raises(ReadOnlyViolationError):
        pg.scalar(sql, check="sneaky")
    assert pg_count(pg) == 3


@pytest.mark.integration
@pytest.mark.parametrize("sql", ["SELECT sneaky_insert()", "SELECT nextval('order_ids')"])
def test_pg_refuses_side_effects_the_lexer_cannot_see(pg: SqlRunner, sql: str) -> None:
    assert why_not_read_only(sql) is None
    with pytest.raises(ReadOnlyViolationError) as err:
        pg.scalar(sql, check="side_effect")
    assert "refused by the database" in str(err.value)
    assert "read-only transaction" in str(err.value)
    assert pg_count(pg) == 3


@pytest.mark.integration
def test_pg_statement_timeout(pg_url: str, pg_tables: None) -> None:
    runner = SqlRunner("amer-oms", pg_url, timeout_s=0.5)
    with pytest.raises(SqlTimeoutError) as err:
        runner.scalar("SELECT pg_sleep(5)", check="slow")
    assert str(err.value) == (
        "amer-oms: check slow (SELECT pg_sleep(5)): timed out after 0.5 s: "
        "canceling statement due to statement timeout"
    )
    assert runner.scalar("SELECT 1") == 1  # the pooled connection recovered


@pytest.mark.integration
def test_pg_error_names_database_check_and_cause(pg: SqlRunner) -> None:
    with pytest.raises(SqlError) as err:
        pg.scalar("SELECT COUNT(*) FROM limits", check="limits_loaded")
    assert str(err.value) == (
        "amer-oms: check limits_loaded (SELECT COUNT(*) FROM limits): "
        'relation "limits" does not exist'
    )


@pytest.mark.integration
def test_pg_password_never_shown(
    pg_url: str, pg_tables: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with_password = pg_url.replace("postgres@", f"postgres:{quote(CANARY, safe='')}@")
    runner = SqlRunner("amer-oms", with_password, timeout_s=2)
    assert runner.scalar("SELECT 1") == 1  # trust auth: the password is ignored, not wrong
    assert CANARY not in repr(runner)
    errors: list[str] = []
    with pytest.raises(SqlError) as err:  # the server echoes the name back
        runner.scalar(f'SELECT * FROM "{CANARY}"', check="echo")
    errors.append(str(err.value))
    assert 'relation "***" does not exist' in errors[0]
    refused = with_password.replace(":5432/", f":{free_port()}/")
    with pytest.raises(SqlError) as err:
        SqlRunner("amer-oms", SecretStr(refused), timeout_s=1).scalar("SELECT 1", check="conn")
    errors.append(str(err.value))
    for text in [*errors, caplog.text]:
        assert CANARY not in text
        assert quote(CANARY, safe="") not in text


def test_secret_url_is_registered_for_redaction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/from-a-secret.db"
    SqlRunner("db", SecretStr(url), timeout_s=1)
    assert redact(f"connect to {url} failed") == "connect to *** failed"


@pytest.mark.integration
def test_pg_a_role_that_could_write_is_named(
    pg: SqlRunner, pg_url: str, pg_schema: str, pg_execute: Callable[[str], None]
) -> None:
    """doctor warns about the checks' role: a superuser, a writer; a SELECT-only role is ok."""
    found = pg.privileges()  # the test connects as postgres: a superuser that may write
    assert any("postgres is a superuser" in f for f in found), found
    assert any("postgres may write" in f for f in found), found
    role = f"ro_{pg_schema[-12:]}"
    pg_execute(f"""
        CREATE ROLE {role} LOGIN;
        GRANT USAGE ON SCHEMA "{pg_schema}" TO {role};
        GRANT SELECT ON ALL TABLES IN SCHEMA "{pg_schema}" TO {role};
    """)
    try:
        reader = SqlRunner("amer-oms", pg_url.replace("postgres@", f"{role}@", 1), timeout_s=5)
        try:
            assert reader.privileges() == []
            assert pg_count(reader) == 3  # and it still reads
        finally:
            reader.close()
    finally:
        pg_execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{pg_schema}" FROM {role}')
        pg_execute(f'REVOKE ALL ON SCHEMA "{pg_schema}" FROM {role}')
        pg_execute(f"DROP ROLE {role}")


def test_sqlite_is_read_only_whatever_the_file(lite: SqlRunner) -> None:
    assert lite.privileges() == []
