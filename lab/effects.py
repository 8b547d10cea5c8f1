"""The lab's effects log: every side effect a lab component applies, one JSON line each.

Tests prove "applied exactly once" from it: a cancel sweep, an archive written, a file
removed, a FIX sequence reset each leave one line, whoever asked for them and however
often. The file is ``OPENBELL_HOME/lab/effects.jsonl``; writers in several processes
(the lab, the commands its SSH hosts run) append whole lines under an exclusive lock.

A line::

    {"id": "eff-1f0c...", "at": "2026-11-27T18:31:02.114Z", "kind": "oms_cancel",
     "target": "amer-oms", "key": "amer-oms|2026-11-27|AMER-20261127-0007",
     "detail": {"order_id": "AMER-20261127-0007", "leaves_qty": 300}}

Kinds: ``oms_cancel`` (an open day order canceled by the admin API), ``fix_logout``
(an end-of-day Logout taken by the venue), ``fix_seq_reset`` (the venue reset a
session's sequence numbers), and, for commands run on a lab host that change files,
``archive`` (``tar -c``), ``remove`` (``rm``), ``move`` (``mv``), ``copy`` (``cp``),
``mkdir`` and ``truncate`` (files written over SFTP are not commands and are not
logged).
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE_NAME = "effects.jsonl"


@dataclass(frozen=True)
class Effect:
    """One applied side effect."""

    id: str
    at: str
    kind: str
    target: str
    key: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "target": self.target,
            "key": self.key,
            "detail": self.detail,
        }


class EffectsLog:
    """Append and read the effects log.

    Example:
        >>> log = EffectsLog(Path("/tmp/ob-doc/effects.jsonl"))
        >>> e = log.record("oms_cancel", "amer-oms", key="amer-oms|2026-11-27|O-1")
        >>> [x.key for x in log.read(kind="oms_cancel")][-1]
        'amer-oms|2026-11-27|O-1'
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, lab_dir: Path | None = None) -> EffectsLog:
        """The log of a lab directory (default: the settings' ``OPENBELL_HOME/lab``)."""
        if lab_dir is None:
            from openbell.settings import get_settings

            lab_dir = get_settings().lab_dir
        return cls(Path(lab_dir) / FILE_NAME)

    def record(self, kind: str, target: str, *, key: str = "", **detail: Any) -> Effect:
        """Append one effect and return it (with its new id)."""
        effect = Effect(
            id=f"eff-{uuid.uuid4().hex}",
            at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            kind=kind,
            target=target,
            key=key,
            detail=detail,
        )
        line = (json.dumps(effect.to_json(), sort_keys=True, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)
        return effect

    def read(
        self, *, kind: str | None = None, target: str | None = None, key: str | None = None
    ) -> list[Effect]:
        """Every effect so far, oldest first, optionally filtered."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash mid-write is not an effect
            e = Effect(**raw)
            if kind not in (None, e.kind) or target not in (None, e.target):
                continue
            if key is not None and e.key != key:
                continue
            out.append(e)
        return out
