"""Load and validate an estate YAML, with errors that name file, line and key path.

``${VAR}`` in string values is replaced from the environment (``OPENBELL_HOME`` defaults
to the settings' home), so the lab's paths follow wherever it was started.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from openbell.errors import EstateError
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings

_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def load_estate(path: str | Path | None = None) -> Estate:
    """Read, expand and validate an estate file.

    Args:
        path: the YAML file; defaults to ``OPENBELL_ESTATE`` or ``runbooks/lab.yaml``.

    Raises:
        EstateError: with ``file``, ``line`` and ``key_path`` set where they are known.

    Example:
        >>> estate = load_estate("runbooks/lab.yaml")
        >>> sorted(estate.regions)
        ['amer', 'apac', 'emea']
    """
    file = Path(path) if path else get_settings().estate
    shown = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EstateError("no such file", file=shown) from None
    except OSError as exc:
        raise EstateError(f"cannot read: {exc.strerror}", file=shown) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "malformed YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise EstateError(f"malformed YAML: {problem}{context}", file=shown, line=line) from None
    except yaml.YAMLError as exc:
        raise EstateError(f"malformed YAML: {exc}", file=shown) from None
    if not isinstance(data, dict):
        raise EstateError(
            "expected a mapping at the top (regions:, hosts:, ...)", file=shown, line=1
        )
    data = _expand(data)
    data["source"] = str(file.resolve())
    rules = data.get("entitlements")
    if isinstance(rules, str) and not Path(rules).is_absolute():
        data["entitlements"] = str(file.resolve().parent / rules)
    try:
        return Estate.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key_path = _format_path(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = "required key is missing"
            loc = loc[:-1]
        elif "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more error{'s' if more > 1 else ''})"
        raise EstateError(msg, file=shown, line=_line_of(root, loc), key_path=key_path) from None
    except EstateError as exc:
        loc = _parse_path(exc.key_path) if exc.key_path else []
        raise exc.located(shown, _line_of(root, loc)) from None


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(_lookup, value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _lookup(m: re.Match[str]) -> str:
    name = m.group(1)
    if name == "OPENBELL_HOME":
        return str(get_settings().home)
    return os.environ.get(name, m.group(0))


def _format_path(loc: list[Any]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for tok in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        parts.append(int(tok[1:-1]) if tok.startswith("[") else tok)
    return parts


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """The 1-based line of the deepest node along ``loc`` that exists."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def estate_version(estate: Estate) -> str:
    """The version a run ran: openbell's and the sha256 of the estate file's bytes.

    An approval is bound to it, so editing the estate after an approval voids it.

    Example:
        >>> estate_version(load_estate("runbooks/lab.yaml"))  # doctest: +ELLIPSIS
        'openbell 0.1.0; estate sha256:...'
    """
    from openbell import __version__

    digest = "unknown"
    if estate.source:
        try:
            digest = hashlib.sha256(Path(estate.source).read_bytes()).hexdigest()
        except OSError as exc:
            raise EstateError(f"cannot read: {exc.strerror}", file=estate.source) from None
    return f"openbell {__version__}; estate sha256:{digest}"
