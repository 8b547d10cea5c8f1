"""The estate: what exists and where, as frozen pydantic models.

An estate YAML (see ``runbooks/lab.yaml``) names regions, hosts, apps, FIX sessions,
market-data feeds, databases with their read-only checks, people and groups. Models
forbid unknown keys; cross-references (an app on a host, a host in a region, a
dependency between apps) are checked after parsing, and a dependency cycle is shown.
"""

from __future__ import annotations

import re
import shlex
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from openbell.errors import (
    EstateError,
    UnknownNameError,
    describe_validation_error,
    format_key_path,
)

ClockTier = Literal["hft", "algo", "voice"]
#: MiFID II RTS 25 maximum divergence from UTC per tier, in microseconds.
CLOCK_TIER_MAX_US: dict[str, int] = {"hft": 100, "algo": 1_000, "voice": 1_000_000}


def _to_argv(value: Any) -> Any:
    """Accept a command as a list of arguments or as one string (split like a shell)."""
    if isinstance(value, str):
        return shlex.split(value)
    return value


Command = Annotated[list[str], BeforeValidator(_to_argv), Field(min_length=1)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(Model):
    """Check limits; every one can be overridden per region."""

    disk_max_pct: float = Field(default=80.0, gt=0, le=100)
    clock_tier: ClockTier = "algo"
    clock_max_offset_us: int | None = Field(default=None, gt=0)
    feed_max_staleness_s: float = Field(default=5.0, gt=0)

    @property
    def clock_limit_us(self) -> int:
        return self.clock_max_offset_us or CLOCK_TIER_MAX_US[self.clock_tier]


class Region(Model):
    """A trading region: a timezone, its venues' calendars, and who to tell."""

    timezone: str
    calendars: list[str] = Field(
        min_length=1, description="exchange_calendars codes; first is primary"
    )
    slack_channel: str
    approver_group: str
    work_pool: str
    thresholds: Thresholds = Thresholds()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown timezone {v!r} (expected an IANA name like Europe/London)"
            ) from exc
        return v

    @field_validator("calendars")
    @classmethod
    def _known_calendars(cls, v: list[str]) -> list[str]:
        import exchange_calendars as xcals

        names = set(xcals.get_calendar_names(include_aliases=True))
        bad = [c for c in v if c not in names]
        if bad:
            raise ValueError(
                f"unknown exchange calendar(s) {bad} (expected codes such as XNYS, XLON, XTKS)"
            )
        return v

    @property
    def primary_calendar(self) -> str:
        return self.calendars[0]


class Host(Model):
    """A machine reached over SSH."""

    region: str
    address: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str
    identity_file: Path | None = None
    host_key: str | None = Field(
        default=None, description="pinned 'type base64' key; else known_hosts"
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    command_timeout_s: float = Field(default=30.0, gt=0)
    disk_paths: list[Annotated[str, AfterValidator(lambda v: _host_path(v))]] = Field(
        default_factory=lambda: ["."]
    )
    fix_store_dir: str | None = None
    log_dir: str | None = None
    order_records_dir: str | None = Field(
        default=None, description="the OMS's order record journals (archived at end of day)"
    )
    archive_dir: str | None = Field(
        default=None,
        description="where end of day writes the host's dated archive (e.g. a WORM mount)",
    )
    clock_command: Command = Field(default_factory=lambda: ["chronyc", "tracking"])

    @field_validator("fix_store_dir", "log_dir", "order_records_dir", "archive_dir")
    @classmethod
    def _dirs(cls, value: str | None) -> str | None:
        # these reach find, tar, df and friends as operands: never an option
        return None if value is None else _host_path(value)


AppKind = Literal["oms", "gateway", "algo", "risk", "marketdata", "service"]


#: A name in the estate (region, host, app, session, feed, database, person, group): it
#: reaches terminals, reports, Slack and the ledger, so printable text only, no markup.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")


def _check_name(name: str, key_path: str) -> None:
    if not _NAME.fullmatch(name):
        raise EstateError(
            f"name {name.encode('unicode_escape').decode()!r}: letters, digits and _ . @ + - "
            "only (at most 64, starting with a letter or digit)",
            key_path=key_path,
        )


def _host_path(value: str) -> str:
    """A path on a host: relative to the login directory or absolute, never through ``..``."""
    if not value or value.strip() != value or "\x00" in value:
        raise ValueError("expected a path, e.g. apps/emea-oms")
    if ".." in Path(value).parts:
        raise ValueError(f"{value!r} goes through '..'; name the directory itself")
    if value.startswith("-"):
        raise ValueError(f"{value!r} starts with '-' (it would read as an option)")
    path = value.rstrip("/") or "/"
    if path in _OPERATORS:  # "!/" too: the trailing slash goes
        raise ValueError(f"{value!r} is an operator to find and test, not a path")
    return path


#: Arguments ``find`` and ``test`` read as operators wherever they stand.
_OPERATORS = frozenset({"!", "(", ")", ","})


def _batch(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a batch is a host count (1) or a share of the hosts ('50%')")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"batch {value}: at least one host")
        return value
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            pct = -1.0
        if 0 < pct <= 100:
            return value
    raise ValueError(f"batch {value!r}: a host count (1) or a share of the hosts ('50%')")


class AppRelease(Model):
    """How releases of an app sit on its hosts and how a new one rolls out.

    On each host, under ``root``: ``releases/<version>/`` side by side (each with the
    ``SHA256SUMS`` of its files) and ``current``, a link to the one that runs. The app's
    start command runs what ``current`` points at.
    """

    root: str = Field(description="release directory on each host, e.g. apps/emea-oms")
    approver_group: str = Field(description="the group whose members authorise a release")
    keep: int = Field(default=3, ge=2, description="releases kept on each host (current included)")
    batches: list[Annotated[int | str, BeforeValidator(_batch)]] = Field(
        default_factory=lambda: list[int | str]([1, "50%", "100%"]),
        min_length=1,
        description="canary first, then the rest: host counts or shares of the hosts",
    )
    max_failed_hosts: int = Field(default=0, ge=0, description="failed hosts tolerated in all")
    soak_s: float = Field(default=60.0, ge=0, description="watch the canary this long")
    soak_interval_s: float = Field(default=1.0, gt=0, description="between soak samples")
    log_file: str | None = Field(
        default=None, description="the app's log on the host, read for error lines in the soak"
    )
    error_pattern: str = Field(default="ERROR", min_length=1, description="an error line has it")
    continue_after_canary: bool = Field(
        default=False,
        description="after the soak, a second decision of the approver group, shown the "
        "canary's evidence, before the other batches switch",
    )

    @field_validator("root", "log_file")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _host_path(value)


class App(Model):
    """A process that must run on some hosts, started in dependency order."""

    hosts: list[str] = Field(min_length=1)
    start: Command
    stop: Command
    status: Command = Field(description="exit 0 = running, non-zero = not running")
    health_url: str | None = Field(
        default=None, description="{host} is replaced by the host address"
    )
    expected_version: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    start_timeout_s: float = Field(default=30.0, gt=0)
    kind: AppKind = Field(
        default="service", description="what it is; pre-release checks are declared per kind"
    )
    release: AppRelease | None = Field(
        default=None, description="how a release of it is laid out and rolled out"
    )


class FixSession(Model):
    """A FIX session we initiate: order entry or drop copy."""

    region: str
    kind: Literal["order_entry", "drop_copy"] = "order_entry"
    address: str
    port: int = Field(ge=1, le=65535)
    begin_string: Literal["FIX.4.2", "FIX.4.4", "FIXT.1.1"] = "FIX.4.4"
    default_appl_ver_id: str | None = Field(default=None, description="FIXT.1.1 only; 9 = FIX50SP2")
    sender_comp_id: str
    target_comp_id: str
    heartbeat_s: int = Field(default=30, ge=1, le=300)
    reset_policy: Literal["daily", "weekly", "never"] = "daily"
    reset_weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] | None = None
    reset_on_logon: bool = Field(default=True, description="send 141=Y on the probe's Logon")
    username: str | None = None
    password_secret: str | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    store_host: str | None = Field(
        default=None,
        description="gateway host holding this session's FIX store; default: the region's "
        "first host with a fix_store_dir",
    )

    @model_validator(mode="after")
    def _fixt_needs_appl_ver(self) -> FixSession:
        if self.begin_string == "FIXT.1.1" and not self.default_appl_ver_id:
            object.__setattr__(self, "default_appl_ver_id", "9")
        if self.reset_policy == "weekly" and not self.reset_weekday:
            raise ValueError("reset_policy 'weekly' needs reset_weekday (mon..sun)")
        return self


class Feed(Model):
    """A market-data feed with an HTTP status endpoint."""

    region: str
    status_url: str
    max_staleness_s: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=3.0, gt=0)


class Expectation(Model):
    """What a check's scalar result (first column of the first row) must satisfy."""

    min: float | None = None
    max: float | None = None
    equals: float | str | None = None

    @model_validator(mode="after")
    def _something(self) -> Expectation:
        if self.min is None and self.max is None and self.equals is None:
            raise ValueError("an expectation needs at least one of min, max, equals")
        return self

    def describe(self) -> str:
        parts = []
        if self.equals is not None:
            parts.append(f"= {self.equals}")
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)

    def holds(self, value: Any) -> bool:
        if self.equals is not None:
            if isinstance(self.equals, str):
                return str(value) == self.equals
            if value is None or float(value) != float(self.equals):
                return False
        if value is None:
            return self.min is None and self.max is None
        if self.min is not None and float(value) < self.min:
            return False
        return not (self.max is not None and float(value) > self.max)


class SqlCheck(Model):
    """A named read-only query with an expectation. Binds :trade_date, :prev_trade_date."""

    name: str
    step: str = Field(description="the step that runs it, e.g. refdata (start of day)")
    sql: str
    expect: Expectation
    description: str = ""


class TradeFile(Model):
    """Where the venue or clearing house drops its trade file for a trade date.

    ``path`` may hold ``{date}`` (YYYYMMDD) and ``{trade_date}`` (YYYY-MM-DD); the file is
    fetched over SFTP from ``host`` with its sha256 verified end to end.
    """

    host: str
    path: str = Field(description="e.g. var/venue/inbound/trades-{date}.csv")
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _host_path(value)

    def path_for(self, day: date) -> str:
        return self.path.format(date=day.strftime("%Y%m%d"), trade_date=day.isoformat())


class OmsQueries(Model):
    """Read-only SQL end of day runs on an OMS database; each binds ``:trade_date``.

    The defaults fit the lab's OMS schema; a real OMS overrides them with views or
    queries returning the same columns.
    """

    fills: str = (
        "SELECT exec_id, order_id, account, symbol, side, qty, price FROM fills "
        "WHERE trade_date = :trade_date"
    )
    drop_copy: str = (
        "SELECT exec_id, order_id, account, symbol, side, qty, price FROM drop_copy "
        "WHERE trade_date = :trade_date"
    )
    unbooked_fills: str = (
        "SELECT exec_id, order_id FROM fills WHERE trade_date = :trade_date AND booked_at IS NULL"
    )
    fill_totals: str = (
        "SELECT o.order_id, o.cum_qty, COALESCE(SUM(f.qty), 0) AS filled_qty FROM orders o "
        "LEFT JOIN fills f ON f.order_id = o.order_id AND f.trade_date = :trade_date "
        "WHERE o.trade_date = :trade_date GROUP BY o.order_id, o.cum_qty"
    )
    start_positions: str = (
        "SELECT account, symbol, qty FROM positions WHERE trade_date = :trade_date"
    )
    end_positions: str = (
        "SELECT account, symbol, qty FROM eod_positions WHERE trade_date = :trade_date"
    )


class OmsEod(Model):
    """What end of day needs of an OMS database (``databases.<name>.oms``)."""

    admin_url: str | None = Field(
        default=None, description="base URL of the OMS admin API (order status, cancel sweep)"
    )
    cancel_sweep: bool = Field(
        default=False,
        description="cancel the day orders still open after the close through the admin API",
    )
    trade_file: TradeFile | None = None
    queries: OmsQueries = OmsQueries()
    timeout_s: float = Field(default=10.0, gt=0, description="admin API calls")

    @model_validator(mode="after")
    def _sweep_needs_api(self) -> OmsEod:
        if self.cancel_sweep and not self.admin_url:
            raise ValueError("cancel_sweep needs admin_url")
        return self


class Database(Model):
    """A database reached with SQLAlchemy; the URL is a secret reference or a plain URL."""

    region: str
    url: str | None = None
    url_secret: str | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    checks: list[SqlCheck] = Field(default_factory=list)
    oms: OmsEod | None = Field(default=None, description="an OMS: end-of-day sources")

    @model_validator(mode="after")
    def _one_url(self) -> Database:
        if (self.url is None) == (self.url_secret is None):
            raise ValueError("give exactly one of url or url_secret")
        return self


class Person(Model):
    name: str
    slack_id: str | None = None
    identities: list[str] = Field(
        default_factory=list, description="other logins of the same person"
    )


class Group(Model):
    members: list[str] = Field(default_factory=list)


class ApprovalPolicy(Model):
    """Which steps of a runbook wait for four-eyes approval before they change anything.

    A listed step asks for approval only when it has something to change (an app to
    start, a session to reset): a re-run that finds everything in place does not wait.
    Only steps that declare what they change may be listed (the estate is refused when it
    is loaded otherwise, naming the ones that can).
    """

    steps: list[str] = Field(min_length=1, description="step names, e.g. [apps]")
    required_approvers: int = Field(default=1, ge=1, description="distinct persons")
    ttl_minutes: float = Field(default=60.0, gt=0, description="unanswered: rejected after")
    approver_group: str | None = Field(
        default=None, description="default: the region's approver_group"
    )


class RunbookSchedule(Model):
    """When a runbook runs by itself: minutes before or after the primary venue's open or close.

    Written in the venue's own terms, so daylight saving and half days need no edits:
    ``{at: open, offset_minutes: -45}`` is 08:45 New York on every XNYS session, and
    ``{at: close, offset_minutes: 20}`` is 13:20 on a 13:00 half day. Runs are made only
    for sessions of the region's primary calendar.
    """

    at: Literal["open", "close"] = Field(description="the session event the time follows")
    offset_minutes: int = Field(
        default=0, ge=-720, le=720, description="minutes after (+) or before (-) it"
    )


class RunbookPolicy(Model):
    """How a runbook behaves in this estate (``runbooks.<key>`` in the YAML).

    Each runbook declares its own model (this one, or a subclass with the fields only it
    has, e.g. :class:`EodPolicy`); a field another runbook has is refused, not ignored.
    """

    approvals: ApprovalPolicy | None = None
    concurrent_run: Literal["wait", "refuse"] = Field(
        default="refuse",
        description="a second run for the same region and trade date: wait for the first, or "
        "refuse at once",
    )
    max_lock_wait_minutes: float = Field(
        default=30.0, gt=0, description="with concurrent_run: wait, the longest wait"
    )
    schedule: RunbookSchedule | None = Field(
        default=None, description="run by itself on every session; none: only when asked"
    )


class EodPolicy(RunbookPolicy):
    """End of day's policy: what to do when it is started before the close."""

    before_close: Literal["wait", "refuse"] = Field(
        default="refuse",
        description="end of day started before the region's close: wait for it, or refuse",
    )
    max_wait_minutes: float = Field(
        default=120.0, gt=0, description="with before_close: wait, the longest wait; else refuse"
    )


class ReleaseWindow(Model):
    """When a region may take a release: after its venues close, before the next start of day.

    The window opens ``after_close_min`` after the last of the region's venues closes
    (half days included) and ends ``sod_lead_min`` before the first of them opens next.
    """

    after_close_min: int = Field(default=30, ge=0, le=24 * 60)
    sod_lead_min: int = Field(default=90, ge=0, le=24 * 60, description="start of day's lead")
    margin_min: int = Field(default=10, ge=0, le=24 * 60, description="kept free before the end")


class FreezeWindow(Model):
    """Days on which no release goes in (index rebalance, a venue's own freeze)."""

    start: date
    end: date
    reason: str = Field(min_length=1)
    regions: list[str] = Field(default_factory=list, description="default: every region")

    @model_validator(mode="after")
    def _ordered(self) -> FreezeWindow:
        if self.end < self.start:
            raise ValueError(f"freeze ends ({self.end}) before it starts ({self.start})")
        return self


class ReleasePolicy(RunbookPolicy):
    """``runbooks.release``: the window, the freezes and how long a release may take."""

    window: ReleaseWindow = ReleaseWindow()
    freeze: list[FreezeWindow] = Field(default_factory=list)
    month_end_freeze: bool = Field(
        default=False, description="no release on the last session of a month"
    )
    minutes_per_batch: float = Field(
        default=10.0, gt=0, description="expected duration of one batch, soak included"
    )
    rollback_minutes: float = Field(default=15.0, gt=0, description="to put every host back")
    rollback: Literal["automatic", "decision"] = Field(
        default="automatic",
        description="after a failed verification: roll back at once (automatic), or first ask "
        "the app's approver group whether to roll back or hold (decision); unanswered within "
        "rollback_decision_minutes, the release rolls back",
    )
    rollback_decision_minutes: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="how long the approver group has to choose rollback or hold",
    )
    ttl_minutes: float = Field(default=60.0, gt=0, description="an unanswered release is refused")
    emergency_approvers: int = Field(
        default=2, ge=2, description="distinct approvers for a release outside the window"
    )


def _runbook_policies(raw: Any) -> Any:
    """Validate each ``runbooks.<key>`` block with the model its runbook declares.

    Unknown runbooks, fields the runbook does not have, and approvals for steps that do not
    exist or change nothing are refused here, naming the valid choices.
    """
    if not isinstance(raw, dict):
        return raw
    from openbell import catalog

    known = catalog.runbooks()
    out: dict[str, Any] = {}
    for key, block in raw.items():
        where = f"runbooks.{key}"
        runbook = known.get(key)
        if runbook is None:
            raise UnknownNameError("runbook", str(key), list(known), key_path=where)
        if isinstance(block, RunbookPolicy):
            policy = block
        else:
            try:
                policy = runbook.policy.model_validate(block if block is not None else {})
            except ValidationError as exc:
                message, loc = describe_validation_error(exc)
                raise EstateError(
                    message, key_path=format_key_path([*where.split("."), *loc])
                ) from None
        if not isinstance(policy, runbook.policy):
            raise EstateError(
                f"expected the policy of {key} ({runbook.policy.__name__})", key_path=where
            )
        if policy.approvals is not None:
            valid = runbook.approvable_steps()
            for i, step in enumerate(policy.approvals.steps):
                if step not in valid:
                    what = (
                        f"{key} has no step {step!r}"
                        if step not in runbook.step_names
                        else f"step {step!r} of {key} changes nothing, so there is nothing to "
                        "approve"
                    )
                    raise EstateError(
                        f"{what}; steps that can wait for approval: {', '.join(valid) or 'none'}",
                        key_path=f"{where}.approvals.steps[{i}]",
                    )
        out[key] = policy
    return out


_SLACK_ID = re.compile(r"[A-Z][A-Z0-9]{2,30}")
_SLACK_USER = re.compile(r"(?P<org>[TE][A-Z0-9]{2,30})/(?P<user>[UW][A-Z0-9]{2,30})")


def _slack_id(value: str, what: str) -> str:
    if not _SLACK_ID.fullmatch(value):
        raise ValueError(f"{value!r}: expected a Slack {what} id (capitals and digits)")
    return value


class SlackApp(Model):
    """The Slack app (``openbell slack``): which requests are the firm's, and who is who.

    A request counts only when it names this app (``api_app_id``), comes from one of the
    firm's workspaces (its ``team_id`` and its user's ``team_id``) or its Enterprise Grid
    org, and its user is mapped here to a person of the estate, qualified by workspace (or
    org): ``T0LAB/UALICE: alice``. Display names, e-mails and anything else a payload says
    about its user are never read. Runs and approvals only from the regions' channels.
    """

    app_id: str = Field(description="the app's id, e.g. A0OPENBELL (api_app_id)")
    workspaces: list[str] = Field(min_length=1, description="the firm's team ids, e.g. T0LAB")
    enterprise: str | None = Field(default=None, description="the firm's Enterprise Grid id")
    channels: dict[str, str] = Field(
        default_factory=dict, description="region -> the channel id runs and approvals come from"
    )
    users: dict[str, str] = Field(
        default_factory=dict, description="<team or enterprise id>/<user id> -> person"
    )

    @field_validator("app_id")
    @classmethod
    def _app(cls, value: str) -> str:
        return _slack_id(value, "app")

    @field_validator("workspaces")
    @classmethod
    def _teams(cls, value: list[str]) -> list[str]:
        return [_slack_id(v, "team") for v in value]

    @field_validator("channels")
    @classmethod
    def _channel_ids(cls, value: dict[str, str]) -> dict[str, str]:
        return {region: _slack_id(c, "channel") for region, c in value.items()}

    @field_validator("users")
    @classmethod
    def _users(cls, value: dict[str, str]) -> dict[str, str]:
        for user in value:
            if not _SLACK_USER.fullmatch(user):
                raise ValueError(
                    f"{user!r}: expected <team or enterprise id>/<user id>, e.g. T0LAB/UALICE "
                    "(a user id alone is not unique across workspaces)"
                )
        return value

    @model_validator(mode="after")
    def _orgs(self) -> SlackApp:
        orgs = {*self.workspaces, *([self.enterprise] if self.enterprise else [])}
        for user in self.users:
            org = user.split("/", 1)[0]
            if org not in orgs:
                raise ValueError(
                    f"users.{user}: {org} is not one of the firm's workspaces or its org "
                    f"({', '.join(sorted(orgs))})"
                )
        return self

    def identity(self, org: str, user: str) -> str:
        """The identity a Slack user is known by in the estate: ``slack:T0LAB/UALICE``."""
        return f"slack:{org}/{user}"


class ArtifactRepository(Model):
    """Where release artifacts come from: ``GET <url>/<app>/<version>/index.json`` names the
    file, its sha256 and its detached ed25519 signature."""

    url: str = Field(description="e.g. https://artifacts.example/openbell")
    signing_keys: dict[str, str] = Field(
        default_factory=dict, description="key name -> ed25519 public key, 32 bytes in base64"
    )
    require_signature: bool = Field(default=True)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r}: expected an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("signing_keys")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        import base64
        import binascii

        for name, key in value.items():
            try:
                raw = base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"signing key {name!r}: expected 32 bytes in base64 (ed25519)")
        return value

    @model_validator(mode="after")
    def _keys_when_required(self) -> ArtifactRepository:
        if self.require_signature and not self.signing_keys:
            raise ValueError("require_signature is true but no signing_keys are named")
        return self


class Estate(Model):
    """Everything openbell knows about the trading estate."""

    version: Literal[1] = 1
    environment: Literal["production", "uat", "lab"] = Field(
        default="production",
        description="lab: a rehearsal clock (OPENBELL_REHEARSAL_AT) is allowed",
    )
    artifacts: ArtifactRepository | None = None
    slack: SlackApp | None = None
    known_hosts: Path
    entitlements: Path | None = Field(
        default=None, description="who may do what (relative to this file); none: deny all"
    )
    regions: dict[str, Region]
    hosts: dict[str, Host] = Field(default_factory=dict)
    apps: dict[str, App] = Field(default_factory=dict)
    fix_sessions: dict[str, FixSession] = Field(default_factory=dict)
    feeds: dict[str, Feed] = Field(default_factory=dict)
    databases: dict[str, Database] = Field(default_factory=dict)
    people: dict[str, Person] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(default_factory=dict)
    runbooks: Annotated[dict[str, RunbookPolicy], BeforeValidator(_runbook_policies)] = Field(
        default_factory=dict
    )
    source: str | None = Field(default=None, exclude=True, description="the file it came from")

    # ---- lookups that name the valid choices on a miss ------------------------------
    def region(self, name: str) -> Region:
        key = name.lower()
        if key not in self.regions:
            raise UnknownNameError("region", name, list(self.regions))
        return self.regions[key]

    def host(self, name: str) -> Host:
        if name not in self.hosts:
            raise UnknownNameError("host", name, list(self.hosts))
        return self.hosts[name]

    def app(self, name: str) -> App:
        if name not in self.apps:
            raise UnknownNameError("app", name, list(self.apps))
        return self.apps[name]

    def hosts_in(self, region: str) -> dict[str, Host]:
        return {n: h for n, h in self.hosts.items() if h.region == region}

    def apps_in(self, region: str) -> dict[str, App]:
        return {n: a for n, a in self.apps.items() if self.hosts[a.hosts[0]].region == region}

    def fix_sessions_in(self, region: str) -> dict[str, FixSession]:
        return {n: s for n, s in self.fix_sessions.items() if s.region == region}

    def feeds_in(self, region: str) -> dict[str, Feed]:
        return {n: f for n, f in self.feeds.items() if f.region == region}

    def databases_in(self, region: str) -> dict[str, Database]:
        return {n: d for n, d in self.databases.items() if d.region == region}

    def secret_names(self, region: str) -> list[str]:
        """The secrets the region's databases and FIX sessions reference, sorted."""
        names = {d.url_secret for d in self.databases_in(region).values() if d.url_secret}
        names |= {
            s.password_secret for s in self.fix_sessions_in(region).values() if s.password_secret
        }
        return sorted(names)

    def oms_in(self, region: str) -> dict[str, Database]:
        """The region's databases that are OMSes (have an ``oms`` block)."""
        return {n: d for n, d in self.databases_in(region).items() if d.oms is not None}

    def store_host(self, session: str) -> str | None:
        """The gateway host holding a FIX session's store, or None when no host has one."""
        cfg = self.fix_sessions[session]
        if cfg.store_host:
            return cfg.store_host
        gateways = sorted(n for n, h in self.hosts_in(cfg.region).items() if h.fix_store_dir)
        return gateways[0] if gateways else None

    def policy(self, runbook: str) -> RunbookPolicy:
        """The estate's settings for a runbook (its model's defaults when it names none).

        Raises:
            UnknownNameError: no such runbook.
        """
        found = self.runbooks.get(runbook)
        if found is not None:
            return found
        from openbell import catalog

        return catalog.get(runbook).policy()

    def thresholds(self, region: str) -> Thresholds:
        return self.region(region).thresholds

    def app_tiers(self, region: str) -> list[list[str]]:
        """Apps of a region grouped in start order: tier 0 has no dependencies in the region."""
        apps = self.apps_in(region)
        level: dict[str, int] = {}

        def depth(name: str) -> int:
            if name not in level:
                deps = [d for d in self.apps[name].depends_on if d in apps]
                level[name] = 1 + max((depth(d) for d in deps), default=-1)
            return level[name]

        for name in apps:
            depth(name)
        tiers: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for name in sorted(apps):
            tiers[level[name]].append(name)
        return tiers

    # ---- cross-reference validation ----------------------------------------------------
    @model_validator(mode="after")
    def _cross_references(self) -> Estate:
        for section in ("regions", "hosts", "apps", "fix_sessions", "feeds", "databases"):
            for name in getattr(self, section):
                _check_name(name, f"{section}.{name}")
        for section in ("people", "groups"):
            for name in getattr(self, section):
                _check_name(name, f"{section}.{name}")
        regions = list(self.regions)
        for name, r in self.regions.items():
            if name != name.lower():
                raise EstateError("region names must be lower case", key_path=f"regions.{name}")
            if self.groups and r.approver_group not in self.groups:
                raise UnknownNameError(
                    "group",
                    r.approver_group,
                    list(self.groups),
                    key_path=f"regions.{name}.approver_group",
                )
        located: list[
            tuple[
                str, dict[str, Host] | dict[str, FixSession] | dict[str, Feed] | dict[str, Database]
            ]
        ] = [
            ("hosts", self.hosts),
            ("fix_sessions", self.fix_sessions),
            ("feeds", self.feeds),
            ("databases", self.databases),
        ]
        for kind, items in located:
            for name, item in items.items():
                if item.region not in self.regions:
                    raise UnknownNameError(
                        "region", item.region, regions, key_path=f"{kind}.{name}.region"
                    )
        if self.slack is not None:
            for region in self.slack.channels:
                if region not in self.regions:
                    raise UnknownNameError(
                        "region", region, regions, key_path=f"slack.channels.{region}"
                    )
            for user, person in self.slack.users.items():
                if person not in self.people:
                    raise UnknownNameError(
                        "person", person, list(self.people), key_path=f"slack.users.{user}"
                    )
        for name, session in self.fix_sessions.items():
            if session.store_host and session.store_host not in self.hosts:
                raise UnknownNameError(
                    "host",
                    session.store_host,
                    list(self.hosts),
                    key_path=f"fix_sessions.{name}.store_host",
                )
        for name, db in self.databases.items():
            tf = db.oms.trade_file if db.oms else None
            if tf and tf.host not in self.hosts:
                raise UnknownNameError(
                    "host",
                    tf.host,
                    list(self.hosts),
                    key_path=f"databases.{name}.oms.trade_file.host",
                )
        sql_steps = _sql_check_steps()
        for name, db in self.databases.items():
            for i, check in enumerate(db.checks):
                if check.step not in sql_steps:
                    raise UnknownNameError(
                        "SQL check step",
                        check.step,
                        sql_steps,
                        key_path=f"databases.{name}.checks[{i}].step",
                    )
        for name, app in self.apps.items():
            for i, h in enumerate(app.hosts):
                if h not in self.hosts:
                    raise UnknownNameError(
                        "host", h, list(self.hosts), key_path=f"apps.{name}.hosts[{i}]"
                    )
            for i, d in enumerate(app.depends_on):
                if d not in self.apps:
                    raise UnknownNameError(
                        "app", d, list(self.apps), key_path=f"apps.{name}.depends_on[{i}]"
                    )
            if app.release is not None:
                where = f"apps.{name}.release"
                if app.release.approver_group not in self.groups:
                    raise UnknownNameError(
                        "group",
                        app.release.approver_group,
                        list(self.groups),
                        key_path=f"{where}.approver_group",
                    )
                if self.artifacts is None:
                    raise EstateError(
                        "an app with a release block needs the estate's artifacts repository "
                        "(artifacts: {url: ..., signing_keys: {...}})",
                        key_path=where,
                    )
        for gname, group in self.groups.items():
            for i, m in enumerate(group.members):
                if m not in self.people:
                    raise UnknownNameError(
                        "person", m, list(self.people), key_path=f"groups.{gname}.members[{i}]"
                    )
        for rb, policy in self.runbooks.items():
            needs = policy.approvals.approver_group if policy.approvals else None
            if needs and self.groups and needs not in self.groups:
                raise UnknownNameError(
                    "group",
                    needs,
                    list(self.groups),
                    key_path=f"runbooks.{rb}.approvals.approver_group",
                )
        cycle = _find_cycle({n: a.depends_on for n, a in self.apps.items()})
        if cycle:
            raise EstateError(
                "dependency cycle: " + " -> ".join(cycle), key_path=f"apps.{cycle[0]}.depends_on"
            )
        return self


def _sql_check_steps() -> list[str]:
    """The steps that run the databases' SQL checks: those whose work is ``check_database``."""
    from openbell import catalog
    from openbell.tasks.database import check_database

    return sorted(
        {s.name for rb in catalog.runbooks().values() for s in rb.steps if s.run is check_database}
    )


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle as a path that ends where it starts, or None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in graph.get(node, []):
            if color.get(nxt, black) == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if color.get(nxt) == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for n in sorted(graph):
        if color[n] == white:
            found = visit(n)
            if found:
                return found
    return None
