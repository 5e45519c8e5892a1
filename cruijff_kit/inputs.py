"""The one place files are read: every decode, parse and shape problem becomes a one-line CkError
naming the file (and the line where known), so no reader of the kit ends in a traceback.

    text = read_text(path, "settings file")
    data = load_yaml_mapping(path, "setup_finetune.yaml")      # duplicate keys are errors
    data = load_json(path, "dataset")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from cruijff_kit.errors import CkError


def read_text(path: str | os.PathLike, what: str, fix: str | None = None) -> str:
    """The file's text as UTF-8; missing, unreadable, a directory or undecodable -> CkError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CkError(what, str(path), "not found", fix or "check the path") from None
    except IsADirectoryError:
        raise CkError(what, str(path), "is a directory, not a file", fix or "give the file's path") from None
    except PermissionError:
        raise CkError(what, str(path), "cannot be read (permission denied)", "make it readable (chmod u+r)") from None
    except OSError as exc:
        raise CkError(what, str(path), f"cannot be read ({exc.strerror or exc})", fix or "check the file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CkError(what, str(path), f"is not UTF-8 text (byte {exc.start}, line {line})",
                      fix or "restore the file from a good copy, or delete it and regenerate it") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise DuplicateKeyError(key, seen[key], key_node.start_mark.line + 1)
        try:
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: let PyYAML report it
            break
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, line: int):
        super().__init__(f"key {key!r} given twice (lines {first_line} and {line})")
        self.key, self.first_line, self.line = key, first_line, line


def parse_yaml(text: str, where: str, line_offset: int = 0) -> Any:
    """YAML text -> data; a syntax error or a duplicated key -> CkError naming `where` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as exc:
        raise CkError(where, exc.key, f"key given twice (lines {exc.first_line + line_offset} and "
                                      f"{exc.line + line_offset}); the first would be silently dropped",
                      "keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1 + line_offset}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise CkError(where, "yaml", f"not valid YAML{at} ({problem})",
                      "fix the indentation or quoting there (strings with ': ' or ' #' need quotes)") from None


def load_yaml_mapping(path: str | os.PathLike, what: str, fix: str | None = None) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    data = parse_yaml(read_text(path, what, fix), f"{what} {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CkError(what, str(path), f"must be a YAML mapping of key: value, not a {type(data).__name__}",
                      fix or "write one `key: value` per line")
    return data


def load_json(path: str | os.PathLike, what: str, fix: str | None = None) -> Any:
    """A JSON file; a syntax error (a truncated file, say) -> CkError with the line and column."""
    text = read_text(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CkError(what, str(path), f"not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})",
                      fix or "regenerate the file; a truncated or hand-edited file is the usual cause") from None
