import os
import subprocess
import sys

import pytest

from cruijff_kit.cli import VERBS, main


def test_help_lists_every_verb(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for verb in ["generate", "design", "scaffold", "run", "status", "summarize", "sanity-check"]:
        assert verb in out


def test_every_verb_has_help():
    for verb in VERBS:
        proc = subprocess.run([sys.executable, "-m", "cruijff_kit", verb, "--help"], capture_output=True, text=True)
        assert proc.returncode in (0, 3), (verb, proc.stderr)
        if proc.returncode == 3:
            assert "not built yet" in proc.stderr
        else:
            assert "usage: ck" in proc.stdout


def run_into_a_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess:
    """`ck ... | head` where head has stopped reading before ck writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "cruijff_kit", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    return proc


def test_a_closed_pipe_ends_quietly_with_141(tmp_path):
    assert run_into_a_closed_pipe(["config", "show"]).returncode == 141
    (tmp_path / "exp" / "a").mkdir(parents=True)
    (tmp_path / "exp" / "a" / "finetune.slurm").write_text("#!/bin/bash\ntrue\n")
    assert run_into_a_closed_pipe(["status", str(tmp_path / "exp")]).returncode == 141


def test_help_into_a_closed_pipe_is_quiet():
    # argparse itself ignores a failed write of --help, so this ends as a normal --help: exit 0
    assert run_into_a_closed_pipe(["run", "--help"]).returncode == 0

