import multiprocessing as mp

import pytest

from cruijff_kit import explog
from cruijff_kit.errors import CkError
from cruijff_kit.markdown_sections import get_section, replace_section


def test_entry_round_trips(tmp_path):
    explog.append_entry(tmp_path, "design", "VERIFY_MODEL", "model dir ok", command="ls x", result="found",
                        explanation="needed by training", extra={"Job ID": "12"})
    entries = explog.read_log(tmp_path, "design")
    assert len(entries) == 1
    e = entries[0]
    assert (e.action, e.description) == ("VERIFY_MODEL", "model dir ok")
    assert e.fields == {"Command": "ls x", "Result": "found", "Explanation": "needed by training", "Job ID": "12"}
    assert (tmp_path / "design-experiment.log").read_text().endswith("\n\n")


def test_bad_action_rejected(tmp_path):
    with pytest.raises(CkError, match="UPPER_SNAKE"):
        explog.append_entry(tmp_path, "design", "verifyModel", "x")
    assert not (tmp_path / "design-experiment.log").exists()


def _writer(args):
    d, k = args
    for i in range(50):
        explog.append_entry(d, "run", "STATE_CHANGE", f"w{k} {i} " + "x" * 2000, result="r" * 3000)


def test_concurrent_writers_never_interleave(tmp_path):
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), k) for k in range(4)])
    entries = explog.read_log(tmp_path, "run")
    assert len(entries) == 200
    assert all(e.fields["Result"] == "r" * 3000 for e in entries)


def test_markdown_section_replace_keeps_rest():
    text = "# T\n\nintro\n\n## Runs\n\nold\n\n## Plan\n\n```yaml\na: 1\n```\n"
    new = replace_section(text, "Runs", "new body")
    assert get_section(new, "Runs") == "new body"
    assert get_section(new, "Plan") == "```yaml\na: 1\n```"
    appended = replace_section(new, "Results", "R")
    assert appended.startswith(new.rstrip("\n")) and get_section(appended, "Results") == "R"
