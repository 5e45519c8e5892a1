import subprocess
import sys

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
