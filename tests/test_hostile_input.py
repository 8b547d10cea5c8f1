"""Hostile input, generated: no estate value reaches a remote program as an option or a
shell word, and no command argument gives a traceback.

Hypothesis draws path-like estate values (``log_dir``, ``disk_paths``, a FIX store, an app's
release root, a log file, ...) biased towards what an attacker would try (``-delete``,
``-h``, ``--version``, ``!``, ``$(id)``, quotes, newlines) and command arguments for the CLI.
For every value the estate accepts, each remote command openbell would build from it is
checked: the SSH command line splits back into exactly the arguments (one shell word per
argument), the value only ever stands where an operand stands (never starting with ``-``,
never an operator of ``find``/``test``), and no ``sh -c`` script text changes with it (the
value reaches the script as ``$1``, never as code).

The counts are printed (``-s`` shows them): at least 10,000 in all.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.runbooks.schema import _host_path
from openbell.tasks import hosts, sessions
from openbell.tasks.archive import ArchivePlan, find_argv
from openbell.tasks.connectors.ssh import remote_command
from openbell.tasks.release import layout

PATH_EXAMPLES = 8_000
CLI_EXAMPLES = 2_000
COUNTS = {"paths": 0, "refused": 0, "commands": 0, "cli": 0}

ATTACKS = [
    "-delete", "-h", "--version", "-rf", "-exec", "--", "-", "!", "(", ")", ",", "=",
    "$(id)", "`id`", "a b", "*", "?", "~", "'", '"', "\\", "\n", "\t", "\x00", "..", "/",
    ";", "&&", "|", ">", "<", "#", "%s", "{date}", "\x1b[31m", "[/x]", "<!channel>",
]  # fmt: skip
PIECES = st.one_of(st.sampled_from(ATTACKS), st.text(max_size=8))
VALUES = st.one_of(
    st.sampled_from(ATTACKS),
    st.text(max_size=40),
    st.lists(PIECES, min_size=1, max_size=4).map("".join),
)

#: What openbell builds from a path on a host: (name, builder).
BUILDERS: list[tuple[str, Callable[[str], list[list[str]]]]] = [
    ("df", lambda p: [hosts.disk_argv(p)]),
    ("fix store", lambda p: [hosts.fix_store_argv(p)]),
    ("logs", lambda p: [hosts.logs_argv(p, 1_700_000_000)]),
    ("store read", lambda p: sessions.store_read_argv(p, date(2026, 11, 27))),
    ("store archive", lambda p: sessions.store_archive_argv(p, date(2026, 11, 27))),
    ("archive find", lambda p: [find_argv(ArchivePlan("h", [p], "*-20261127*", p, f"{p}/a"))]),
    ("release state", lambda p: [layout.read_state(p)]),
    ("release verify", lambda p: [layout.verify_tree(p)]),
    ("release df", lambda p: [layout.disk_free(p)]),
    ("release lock", lambda p: [layout.take_lock(p, "run-1")]),
    ("release unlock", lambda p: [layout.release_lock(p, "run-1")]),
    ("release staging", lambda p: [layout.remove_stale_staging(p)]),
    ("release unpack", lambda p: [layout.unpack(f"{p}/a.tgz", p)]),
    ("release rename", lambda p: [layout.rename_into_place(p, f"{p}.new")]),
    ("release remove", lambda p: [layout.remove(p)]),
    ("release link", lambda p: [layout.make_link(p, "1.2.3")]),
    ("release swap", lambda p: [layout.swap_link(p)]),
    ("release read link", lambda p: [layout.read_link(p)]),
    ("soak errors", lambda p: [layout.count_errors(p, "ERROR", 0)]),
    ("soak lines", lambda p: [layout.count_lines(p)]),
]
#: Arguments find and test read as operators, wherever they stand.
OPERATORS = {"!", "(", ")", ","}


def _scripts(argvs: list[list[str]]) -> list[str]:
    return [a[2] for a in argvs if a[:2] == ["sh", "-c"]]


def _check_commands(value: str) -> None:
    for name, build in BUILDERS:
        argvs = build(value)
        # the script text of every `sh -c` is the same whatever the value: it is data ($1)
        assert _scripts(argvs) == _scripts(build("benign/path")), name
        for argv in argvs:
            line = remote_command(argv)
            assert shlex.split(line) == [*argv, "</dev/null"], (name, value)  # one word each
            for arg in argv[1:]:
                if arg == value or arg.startswith(f"{value}/") or arg.startswith(f"{value}."):
                    assert not arg.startswith("-") and arg not in OPERATORS, (name, arg)
            COUNTS["commands"] += 1


@settings(
    max_examples=PATH_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
@given(VALUES)
def test_no_estate_path_reaches_a_remote_program_as_an_option_or_code(value: str) -> None:
    COUNTS["paths"] += 1
    try:
        accepted = _host_path(value)
    except ValueError:
        COUNTS["refused"] += 1
        return
    assert not accepted.startswith("-") and accepted not in OPERATORS
    _check_commands(accepted)


def test_the_attacks_themselves_are_refused() -> None:
    for attack in ["-delete", "-h", "--version", "-rf", "!", "(", "\x00", "..", " a", ""]:
        with pytest.raises(ValueError):
            _host_path(attack)


ARG = st.one_of(st.sampled_from(ATTACKS), st.text(max_size=20))
runner = CliRunner()


@settings(
    max_examples=CLI_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(
    runbook=st.one_of(st.sampled_from(["sod", "eod", "release"]), ARG),
    region=st.one_of(st.sampled_from(["emea", "amer", "apac"]), ARG),
    who=ARG,
    day=st.one_of(st.none(), st.sampled_from(["2026-11-24", "1989-12-31", "2101-01-01"]), ARG),
)
def test_no_command_argument_gives_a_traceback(
    runbook: str, region: str, who: str, day: str | None
) -> None:
    COUNTS["cli"] += 1
    args = ["plan", runbook, "--region", region, "--as", who]
    if day is not None:
        args += ["--date", day]
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args,
        result.exception,
    )
    assert result.exit_code in (0, 1, 2), (args, result.exit_code)
    assert "Traceback" not in result.output
    assert "\x1b" not in result.output, args  # no escape sequence from the input


def test_zz_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Print what was tried (runs after the generators in this module)."""
    total = COUNTS["paths"] + COUNTS["cli"]
    with capsys.disabled():
        print(
            f"\nhostile_input: estate_paths={COUNTS['paths']} refused={COUNTS['refused']} "
            f"remote_commands_checked={COUNTS['commands']} cli_invocations={COUNTS['cli']} "
            f"total={total}"
        )
    if COUNTS["paths"] and COUNTS["cli"]:  # the module ran whole (not a -k selection)
        assert total >= 10_000
