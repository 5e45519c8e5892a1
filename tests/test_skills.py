"""Skills are tested documentation: their frontmatter follows the Agent Skills rules, and every
`ck …` command they tell the agent to run actually runs against a temporary scratch."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SKILLS = sorted((ROOT / ".claude" / "skills").glob("*/SKILL.md"))
ALLOWED_KEYS = {"name", "description", "license", "allowed-tools", "metadata", "compatibility"}
WORKFLOW_ORDER = ["design-experiment", "scaffold-experiment", "run-experiment", "summarize-experiment"]
VERDICT_SKILLS = {"summarize-experiment"}  # `ck summarize` exits 1 when a verdict is not PASS: a verdict, not an error


def frontmatter(path: Path) -> dict:
    text = path.read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    assert m, f"{path}: no YAML frontmatter"
    data = yaml.safe_load(m.group(1))
    assert isinstance(data, dict), f"{path}: frontmatter is not a mapping"
    return data


def ck_commands(path: Path) -> list[str]:
    """Every line starting with `ck ` inside ```bash blocks of the skill."""
    text = path.read_text()
    cmds = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("ck "):
                cmds.append(line)
    return cmds


def test_the_workflow_skills_exist():
    names = {p.parent.name for p in SKILLS}
    assert set(WORKFLOW_ORDER) <= names, names


@pytest.mark.parametrize("skill", SKILLS, ids=lambda p: p.parent.name)
def test_frontmatter_follows_agent_skills_rules(skill):
    fm = frontmatter(skill)
    assert set(fm) <= ALLOWED_KEYS, set(fm) - ALLOWED_KEYS
    name = fm.get("name")
    assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) and len(name) <= 64
    assert name == skill.parent.name
    desc = fm.get("description")
    assert isinstance(desc, str) and 0 < len(desc) <= 1024
    assert "<" not in desc and ">" not in desc
    assert ck_commands(skill), f"{skill}: names no ck command"


def _substitute(cmd: str, exp_dir: Path) -> list[str]:
    cmd = cmd.replace("EXP_DIR", str(exp_dir))
    argv = shlex.split(cmd, comments=True)
    return argv


@pytest.mark.slow
def test_every_skill_command_runs(tmp_path):
    """Runs the skills in workflow order against one temporary scratch, so each step's
    commands see the previous step's results (EXP_DIR = the designed experiment)."""
    env = dict(os.environ)
    env["CK_SCRATCH"] = str(tmp_path / "scratch")
    env["CK_CONFIG"] = str(tmp_path / "settings.yaml")
    env["CK_DATA_DIR"] = str(tmp_path / "data")
    env["CK_EXPERIMENT_DIR_HINT"] = ""
    ck = [sys.executable, "-m", "cruijff_kit"]
    ordered = sorted(SKILLS, key=lambda p: WORKFLOW_ORDER.index(p.parent.name) if p.parent.name in WORKFLOW_ORDER else 99)
    exp_dirs = lambda: sorted((tmp_path / "scratch" / "ck-sanity-checks").glob("*"))  # noqa: E731
    ran = 0
    for skill in ordered:
        for cmd in ck_commands(skill):
            found = exp_dirs()
            if "EXP_DIR" in cmd and not found:
                pytest.fail(f"{skill.parent.name}: `{cmd}` needs an experiment but no earlier skill command made one")
            argv = _substitute(cmd, found[-1] if found else tmp_path)
            proc = subprocess.run(ck + argv[1:], env=env, capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
            allowed = (0, 1) if skill.parent.name in VERDICT_SKILLS else (0,)
            assert proc.returncode in allowed, f"{skill.parent.name}: `{cmd}` exited {proc.returncode}:\n{proc.stderr[-2000:]}"
            if skill.parent.name in VERDICT_SKILLS:
                assert "Traceback" not in proc.stderr and proc.stdout.strip(), f"{skill.parent.name}: `{cmd}` printed nothing"
            ran += 1
    assert ran >= 3


def test_design_skill_lists_the_presets_as_ck_design_help_prints_them():
    from cruijff_kit.checks import get_check
    from cruijff_kit.commands.design import presets_text

    text = (ROOT / ".claude" / "skills" / "design-experiment" / "SKILL.md").read_text()
    blocks = re.findall(r"```text\n(presets:.*?)\n```", text, flags=re.S)
    assert blocks == [presets_text(get_check("bit_sequences"))]


def test_summarize_skill_names_every_verdict_and_experiment_check():
    from cruijff_kit.summarize import NOT_RUN, PENDING

    text = (ROOT / ".claude" / "skills" / "summarize-experiment" / "SKILL.md").read_text()
    for word in ("PASS", "FAIL", "INCONCLUSIVE", NOT_RUN, PENDING, "convergence speed", "floor curve",
                 "train/val tracking", "--json"):
        assert word in text, word
