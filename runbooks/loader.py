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

from pydantic import ValidationError

from openbell.errors import EstateError, describe_validation_error, format_key_path
from openbell.runbooks.schema import Estate
from openbell.runbooks.yamlio import line_of, parse_key_path, read_yaml
from openbell.settings import get_settings

_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def load_estate(
    path: str | Path | None = None, *, entitlements: str | Path | None = None
) -> Estate:
    """Read, expand and validate an estate file.

    Args:
        path: the YAML file; defaults to ``OPENBELL_ESTATE`` or ``runbooks/lab.yaml``.
        entitlements: read the entitlements from this file instead of the one the estate
            names (a pinned copy, deployments/pin.py).

    Raises:
        EstateError: with ``file``, ``line`` and ``key_path`` set where they are known.

    Example:
        >>> estate = load_estate("runbooks/lab.yaml")
        >>> sorted(estate.regions)
        ['amer', 'apac', 'emea']
    """
    file = Path(path) if path else get_settings().estate
    shown = str(file)
    doc = read_yaml(file)
    root, data = doc.root, doc.data
    if not isinstance(data, dict):
        raise EstateError(
            "expected a mapping at the top (regions:, hosts:, ...)", file=shown, line=1
        )
    data = _expand(data)
    data["source"] = str(file.resolve())
    rules = data.get("entitlements")
    if isinstance(rules, str) and not Path(rules).is_absolute():
        data["entitlements"] = str(file.resolve().parent / rules)
    if entitlements is not None:
        data["entitlements"] = str(Path(entitlements).resolve())
    try:
        return Estate.model_validate(data)
    except ValidationError as exc:
        msg, loc = describe_validation_error(exc)
        raise EstateError(
            msg, file=shown, line=line_of(root, loc), key_path=format_key_path(loc)
        ) from None
    except EstateError as exc:
        where = parse_key_path(exc.key_path) if exc.key_path else []
        raise exc.located(shown, line_of(root, where)) from None


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
