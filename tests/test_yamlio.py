"""The one YAML reader: what plain safe_load gets silently wrong, or never finishes, is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openbell.errors import EstateError
from openbell.runbooks.yamlio import read_yaml

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_a_regular_file_reads_with_lines(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("top:\n  inner: [1, 2]\n  other: x\n")
    doc = read_yaml(p)
    assert doc.data == {"top": {"inner": [1, 2], "other": "x"}}
    assert doc.line_of(["top", "other"]) == 3
    assert doc.line_of(["top", "missing"]) == 1


def test_duplicate_keys_are_refused_at_any_depth(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("a:\n  b: 1\n  c: 2\n  b: 3\n")
    with pytest.raises(EstateError) as exc:
        read_yaml(p)
    assert (exc.value.line, exc.value.key_path) == (4, "a.b")
    assert "duplicate key 'b' (first at line 2)" in str(exc.value)


def test_a_billion_laughs_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "laughs.yaml"
    p.write_text(LAUGHS)
    assert p.stat().st_size < 1024
    with pytest.raises(EstateError, match="aliases expand to more than 100000 nodes"):
        read_yaml(p)


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("base: &b {user: ops, port: 22}\nh1: *b\nh2: {<<: *b, port: 2222}\n")
    assert read_yaml(p).data["h2"] == {"user": "ops", "port": 2222}


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(EstateError, match="not a regular file"):
        read_yaml(fifo)


def test_a_device_is_refused() -> None:
    with pytest.raises(EstateError, match="not a regular file"):
        read_yaml("/dev/zero")


def test_a_file_too_large_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_text("a: " + "x" * 2000 + "\n")
    with pytest.raises(EstateError, match="too large"):
        read_yaml(p, max_bytes=1000)


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes("a: 1\nb: caf\xe9\n".encode("latin-1"))
    with pytest.raises(EstateError) as exc:
        read_yaml(p)
    assert str(p) in str(exc.value) and exc.value.line == 2
    assert "not UTF-8: byte 0xe9" in str(exc.value)


def test_python_tags_are_not_constructed(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("a: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(EstateError, match="malformed YAML"):
        read_yaml(p)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(EstateError, match="no such file"):
        read_yaml(tmp_path / "nope.yaml")
