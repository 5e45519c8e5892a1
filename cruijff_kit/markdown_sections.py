"""Replace or append one `## Heading` section of a Markdown file, atomically and under a lock.

Used to keep experiment_summary.md current: scaffold lists run directories, run records job ids
and states, summarize writes Results. Every other byte of the file is left as it was.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cruijff_kit.inputs import read_text
from cruijff_kit.fsutil import atomic_write_text, locked


def _section_span(text: str, heading: str) -> tuple[int, int] | None:
    m = re.search(rf"^## {re.escape(heading)}[ \t]*$", text, flags=re.M)
    if not m:
        return None
    nxt = re.search(r"^## ", text[m.end():], flags=re.M)
    end = m.end() + nxt.start() if nxt else len(text)
    return m.start(), end


def get_section(text: str, heading: str) -> str | None:
    span = _section_span(text, heading)
    if span is None:
        return None
    body = text[span[0]:span[1]].split("\n", 1)
    return body[1].strip("\n") if len(body) > 1 else ""


def replace_section(text: str, heading: str, body: str) -> str:
    block = f"## {heading}\n\n{body.strip()}\n\n"
    span = _section_span(text, heading)
    if span is None:
        return text.rstrip("\n") + "\n\n" + block
    return text[: span[0]] + block + text[span[1]:].lstrip("\n")


def set_section(path: str | os.PathLike, heading: str, body: str) -> None:
    """Rewrite `## heading` of the file at `path` (appending it if absent)."""
    path = Path(path)
    with locked(path):
        text = read_text(path, path.name) if path.exists() else ""
        new = replace_section(text, heading, body)
        if new != text:
            atomic_write_text(path, new)
