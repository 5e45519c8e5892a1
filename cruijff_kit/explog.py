"""The workflow logs: design-experiment.log, scaffold-experiment.log, run-experiment.log.

Each entry:

    [YYYY-MM-DD HH:MM:SS] ACTION: description
    Command: ...
    Result: ...
    Explanation: ...
    <blank line>

ACTION is UPPER_SNAKE. Extra `Key: value` lines (e.g. `Job ID:`) may follow Explanation.
Files are append-only; an entry is written with one write() under an exclusive lock, so two
writers never interleave.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cruijff_kit.errors import CkError
from cruijff_kit.inputs import read_text

LOG_NAMES = {
    "design": "design-experiment.log",
    "scaffold": "scaffold-experiment.log",
    "run": "run-experiment.log",
}
ACTION_RE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
HEADER_RE = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\] ([A-Z][A-Z0-9_]*): (.*)$")
FIELD_RE = re.compile(r"^([A-Z][A-Za-z ]*): (.*)$")


@dataclass
class LogEntry:
    timestamp: str
    action: str
    description: str
    fields: dict[str, str] = field(default_factory=dict)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def format_entry(
    action: str,
    description: str,
    command: str = "",
    result: str = "",
    explanation: str = "",
    extra: dict[str, object] | None = None,
    when: _dt.datetime | None = None,
) -> str:
    if not ACTION_RE.match(action):
        raise CkError("action", action, "must be UPPER_SNAKE_CASE", "use e.g. VERIFY_MODEL")
    stamp = (when or _dt.datetime.now()).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"[{stamp}] {action}: {_one_line(description)}",
        f"Command: {_one_line(command) or '-'}",
        f"Result: {_one_line(result) or '-'}",
        f"Explanation: {_one_line(explanation) or '-'}",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {_one_line(value)}")
    return "\n".join(lines) + "\n\n"


def log_path(exp_dir: str | os.PathLike, log: str) -> Path:
    """`log` is a short name (design, scaffold, run) or a file name ending in .log."""
    name = LOG_NAMES.get(log, log)
    if not name.endswith(".log") or "/" in name:
        raise CkError("log", log, "unknown log", f"use one of {', '.join(LOG_NAMES)}")
    return Path(exp_dir) / name


def append_entry(exp_dir: str | os.PathLike, log: str, action: str, description: str, **kw) -> LogEntry:
    """Append one entry to `<exp_dir>/<log>`; returns what was written."""
    text = format_entry(action, description, **kw)
    path = log_path(exp_dir, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return parse_log(text)[0]


def parse_log(text: str) -> list[LogEntry]:
    """Parse a whole log; raises ValueError on a malformed entry (used by tests and `ck status`)."""
    entries: list[LogEntry] = []
    for block in [b for b in text.split("\n\n") if b.strip()]:
        lines = block.strip("\n").split("\n")
        head = HEADER_RE.match(lines[0])
        if not head:
            raise ValueError(f"malformed log entry header: {lines[0]!r}")
        entry = LogEntry(head.group(1), head.group(2), head.group(3))
        for line in lines[1:]:
            m = FIELD_RE.match(line)
            if not m:
                raise ValueError(f"malformed log line in {entry.action}: {line!r}")
            entry.fields[m.group(1)] = m.group(2)
        for required in ("Command", "Result", "Explanation"):
            if required not in entry.fields:
                raise ValueError(f"log entry {entry.action} lacks {required}:")
        entries.append(entry)
    return entries


def read_log(exp_dir: str | os.PathLike, log: str) -> list[LogEntry]:
    path = log_path(exp_dir, log)
    if not path.exists():
        return []
    try:
        return parse_log(read_text(path, path.name))
    except ValueError as exc:
        raise CkError(path.name, str(path), f"is not a workflow log ({exc})",
                      "restore it from a good copy, or move it away to start a new log") from None
