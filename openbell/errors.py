"""openbell's error hierarchy.

::

    OpenbellError
     ├── EstateError            the estate YAML is malformed or inconsistent
     │    └── UnknownNameError  a region/host/app that does not exist (lists the valid ones)
     ├── ConnectorError         talking to a target failed (names target, action, answer)
     │    ├── SshError
     │    │    ├── HostUnreachableError   refused, timed out, no route
     │    │    ├── HostKeyError           unknown or mismatched host key
     │    │    ├── AuthError              the key was refused
     │    │    ├── CommandTimeoutError    the command did not finish in its deadline
     │    │    └── ConnectionLostError    lost after the command was sent: outcome unknown
     │    ├── HttpError
     │    ├── FixError
     │    │    ├── FixLogonRejectedError
     │    │    ├── FixSequenceTooLowError (carries the expected MsgSeqNum)
     │    │    └── FixTimeoutError
     │    └── SqlError
     │         ├── ReadOnlyViolationError
     │         └── SqlTimeoutError
     ├── NotEntitledError       an identity may not do that (names the rule, or default deny)
     ├── ApprovalRuleError      the approvals on record do not satisfy four-eyes
     └── NotifyError            a notification could not be delivered (never fails a run)

Every message says which target, what was tried, and what came back.
"""

from __future__ import annotations

from collections.abc import Sequence


class OpenbellError(Exception):
    """Base of every error openbell raises on purpose."""


class EstateError(OpenbellError):
    """The estate configuration is invalid.

    Attributes:
        file: the YAML file, when known.
        line: 1-based line number, when known.
        key_path: dotted path of the offending key, e.g. ``apps.oms.hosts[0]``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key_path: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.key_path = key_path
        self.reason = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key_path}: " if self.key_path else ""
        return f"{where}{key}{self.reason}"

    def located(self, file: str, line: int | None) -> EstateError:
        """The same error (same class), placed in a file at a line."""
        self.file, self.line = file, line
        self.args = (self._format(),)
        return self


class UnknownNameError(EstateError):
    """A name (region, host, app, ...) that the estate does not define."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...], **kw: object):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        listing = ", ".join(self.valid) if self.valid else "(none defined)"
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {listing}", **kw)  # type: ignore[arg-type]


class ConnectorError(OpenbellError):
    """Talking to a target failed.

    Attributes:
        target: the host, session, URL or database name.
        action: what was tried.
        answer: what came back (exit code, stderr tail, reject text), if anything.
    """

    retryable: bool = False

    def __init__(self, target: str, action: str, answer: str = "") -> None:
        self.target = target
        self.action = action
        self.answer = answer
        msg = f"{target}: {action}"
        if answer:
            msg += f": {answer}"
        super().__init__(msg)


class SshError(ConnectorError):
    """An SSH connection or command failed."""


class HostUnreachableError(SshError):
    """The host refused or did not answer within its connect deadline."""

    retryable = True


class HostKeyError(SshError):
    """The host key is not in known_hosts or does not match it."""


class AuthError(SshError):
    """The host refused our key."""


class CommandTimeoutError(SshError):
    """The command did not finish within its deadline (the outcome is unknown)."""


class ConnectionLostError(SshError):
    """The connection dropped after the command was sent: the outcome is unknown."""


class HttpError(ConnectorError):
    """An HTTP request failed or answered with an unexpected status."""


class FixError(ConnectorError):
    """A FIX session probe failed."""


class FixLogonRejectedError(FixError):
    """The counterparty answered our Logon with a Logout or a Reject."""


class FixSequenceTooLowError(FixError):
    """The counterparty expects a higher MsgSeqNum than we sent.

    Attributes:
        expected: the MsgSeqNum the counterparty expects next.
    """

    def __init__(self, target: str, action: str, answer: str, expected: int) -> None:
        self.expected = expected
        super().__init__(target, action, answer)


class FixTimeoutError(FixError):
    """The counterparty did not answer in time."""


class SqlError(ConnectorError):
    """A SQL check failed to run."""


class ReadOnlyViolationError(SqlError):
    """The statement would write, or is not a single statement."""


class SqlTimeoutError(SqlError):
    """The statement exceeded its timeout."""


class NotifyError(OpenbellError):
    """A notification could not be delivered; recorded, never fails a run."""


class NotEntitledError(OpenbellError):
    """An identity is not entitled to an action on a runbook in a region.

    Attributes:
        who: the identity that asked.
        action: ``plan``, ``run``, ``approve``, ``cancel``, ``audit`` or ``report``.
        runbook: e.g. ``sod``.
        region: e.g. ``emea``.
        rule: ``file:line`` of the deny rule that decided it, or None for default deny.
        reason: the human reason, also the message.
    """

    def __init__(
        self, reason: str, *, who: str, action: str, runbook: str, region: str, rule: str | None
    ) -> None:
        self.who = who
        self.action = action
        self.runbook = runbook
        self.region = region
        self.rule = rule
        self.reason = reason
        super().__init__(reason)


class ApprovalRuleError(OpenbellError):
    """The approvals on record do not satisfy the four-eyes rules for a step.

    Attributes:
        run_id: the run that asked for approval.
        step: the step that needs it.
        status: ``pending``, ``rejected`` or ``expired``.
        reason: the human reason (who decided what, and why it does not count).
    """

    def __init__(self, reason: str, *, run_id: str, step: str, status: str) -> None:
        self.run_id = run_id
        self.step = step
        self.status = status
        self.reason = reason
        super().__init__(f"run {run_id} step {step}: {reason}")


def format_key_path(loc: Sequence[object]) -> str:
    """``["apps", "oms", "hosts", 0]`` -> ``apps.oms.hosts[0]``."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def describe_validation_error(exc: Exception) -> tuple[str, list[object]]:
    """A pydantic ``ValidationError`` as (one message, the location of its first error).

    The message says what was wrong in words a person reads (``unknown key 'x'``,
    ``required key is missing``, the value given), and how many more errors there are.
    """
    errors = exc.errors()  # type: ignore[attr-defined]
    err = errors[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {err['input']!r})"
    more = len(errors) - 1
    if more:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    return msg, loc
