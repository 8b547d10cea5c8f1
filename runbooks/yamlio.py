"""The one YAML reader openbell uses for the files people give it (estate, entitlements).

It refuses, with the file, the line and the key path, what a plain ``yaml.safe_load``
accepts and silently gets wrong or cannot finish:

- a path that is not a regular file (a FIFO would block, ``/dev/zero`` never ends), or a
  file larger than :data:`MAX_BYTES`;
- bytes that are not UTF-8 (naming the file and the line);
- a key given twice in one mapping (YAML keeps the last one, so a second
  ``known_hosts:`` would silently win);
- aliases that expand past :data:`MAX_ALIASED` nodes (a 1 KB "billion laughs" file would
  otherwise take minutes and gigabytes to walk).

Only YAML's safe schema is constructed: no Python objects, no tags beyond the core ones.

Example:
    >>> doc = read_yaml("runbooks/lab.yaml")
    >>> sorted(doc.data["regions"])
    ['amer', 'apac', 'emea']
    >>> doc.line_of(["regions", "emea"]) > 1
    True
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from openbell.errors import EstateError, format_key_path

#: The largest file read (an estate of thousands of hosts is well under this).
MAX_BYTES = 8 * 1024 * 1024
#: The most nodes aliases may add once expanded (a YAML bomb adds billions).
MAX_ALIASED = 100_000


#: libyaml's parser where PyYAML has it (about ten times faster), else the pure-Python one.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlDoc:
    """A document read: its data, its node tree (for lines), and the file as shown."""

    data: Any
    root: yaml.Node | None
    file: str

    def line_of(self, loc: list[Any]) -> int | None:
        """The 1-based line of the deepest node along ``loc`` that exists."""
        return line_of(self.root, loc)


def read_yaml(
    path: str | Path, *, max_bytes: int = MAX_BYTES, max_aliased: int = MAX_ALIASED
) -> YamlDoc:
    """Read and parse one YAML file, refusing what cannot be right (see the module doc).

    Raises:
        EstateError: with the file, and the line and key path where they are known.
    """
    file = Path(path)
    shown = str(file)
    text = _read_text(file, shown, max_bytes)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check(root, shown, max_aliased)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "malformed YAML"
        context = f" ({exc.context})" if exc.context else ""
        hint = "; write '*' in quotes" if exc.context == "while scanning an alias" else ""
        raise EstateError(
            f"malformed YAML: {problem}{context}{hint}",
            file=shown,
            line=mark.line + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise EstateError(f"malformed YAML: {exc}", file=shown) from None
    finally:
        loader.dispose()
    return YamlDoc(data=data, root=root, file=shown)


def _read_text(file: Path, shown: str, max_bytes: int) -> str:
    try:
        info = os.stat(file)  # before opening: opening a FIFO would block
    except FileNotFoundError:
        raise EstateError("no such file", file=shown) from None
    except OSError as exc:
        raise EstateError(f"cannot read: {exc.strerror}", file=shown) from None
    if not stat.S_ISREG(info.st_mode):
        raise EstateError("not a regular file (a YAML file is expected)", file=shown)
    if info.st_size > max_bytes:
        raise EstateError(
            f"too large: {info.st_size} bytes (at most {max_bytes} are read)", file=shown
        )
    try:
        with file.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise EstateError(f"cannot read: {exc.strerror}", file=shown) from None
    if len(raw) > max_bytes:
        raise EstateError(f"too large: more than {max_bytes} bytes", file=shown)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise EstateError(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}", file=shown, line=line
        ) from None


def _check(root: yaml.Node, shown: str, max_aliased: int) -> None:
    """Refuse duplicate keys, and alias expansion past ``max_aliased`` nodes.

    Every node is walked once for itself; a node reached again through an alias is walked
    again (that is what expanding it costs) and counts against the budget, so the walk
    stops at the budget however the aliases nest. Paths are kept as parent links and
    spelled out only for an error.
    """
    mapping, sequence = yaml.MappingNode, yaml.SequenceNode
    links: list[tuple[int, Any]] = [(-1, None)]  # (parent link, key or index)
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    seen_nodes: set[int] = set()
    aliased = 0
    while stack:
        node, at = stack.pop()
        if id(node) in seen_nodes:
            aliased += 1 + len(node.value)
            if aliased > max_aliased:
                raise EstateError(
                    f"aliases expand to more than {max_aliased} nodes: refusing to expand "
                    "them (a YAML bomb, or an estate that should not use aliases so)",
                    file=shown,
                    line=node.start_mark.line + 1,
                    key_path=format_key_path(_path(links, at)) or None,
                )
        else:
            seen_nodes.add(id(node))
        if type(node) is mapping:
            keys: dict[str, int] = {}
            for k, v in node.value:
                key = str(k.value)
                if key in keys and key != "<<":
                    raise EstateError(
                        f"duplicate key {key!r} (first at line {keys[key]}): YAML would keep "
                        "only the last one",
                        file=shown,
                        line=k.start_mark.line + 1,
                        key_path=format_key_path([*_path(links, at), key]),
                    )
                keys[key] = k.start_mark.line + 1
                if type(v) is mapping or type(v) is sequence:
                    links.append((at, key))
                    stack.append((v, len(links) - 1))
        elif type(node) is sequence:
            for i, item in enumerate(node.value):
                if type(item) is mapping or type(item) is sequence:
                    links.append((at, i))
                    stack.append((item, len(links) - 1))


def _path(links: list[tuple[int, Any]], at: int) -> list[Any]:
    out: list[Any] = []
    while at > 0:
        at, key = links[at]
        out.append(key)
    return out[::-1]


def line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
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


def parse_key_path(path: str) -> list[str | int]:
    """``apps.oms.hosts[0]`` -> ``["apps", "oms", "hosts", 0]``."""
    parts: list[str | int] = []
    for tok in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        parts.append(int(tok[1:-1]) if tok.startswith("[") else tok)
    return parts
