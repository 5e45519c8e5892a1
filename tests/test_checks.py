"""Checks are plugins: found through the `cruijff_kit.checks` entry points, named nowhere in the core.

The second check, tests/fixtures/constant_check/, lives outside cruijff_kit/ and is registered the way
`pip install` would register it (a *.dist-info with entry_points.txt on the path), not installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cruijff_kit.checks import ENTRY_POINT_GROUP, check_dataset_shape, get_check, registered
from cruijff_kit.errors import CkError
from cruijff_kit.summarize import FAIL, PASS, Expectation, judge_run

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "constant_check"
CHECK_WORDS = re.compile(r"parity|bernoulli", re.IGNORECASE)


def _with_fixture_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _ck(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, env=env or _with_fixture_env(),
                          capture_output=True, text=True, timeout=timeout)


def _constant_module():
    sys.path.insert(0, str(FIXTURE))
    try:
        import constant_check
    finally:
        sys.path.remove(str(FIXTURE))
    return constant_check


def test_the_core_names_no_check():
    hits = []
    for path in sorted((REPO / "cruijff_kit").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".j2", ".md", ".yaml", ".txt"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if CHECK_WORDS.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == []


def test_the_built_in_check_registers_through_the_entry_point():
    from importlib.metadata import distributions

    names = {ep.name for d in distributions() for ep in d.entry_points if ep.group == ENTRY_POINT_GROUP}
    assert "bit_sequences" in names
    check = get_check("bit-sequences")
    assert check is get_check("bit_sequences") is registered()["bit_sequences"]
    with pytest.raises(CkError, match="unknown sanity check"):
        get_check("no_such_check")


@pytest.mark.parametrize("data, problem", [
    ([], "needs top-level"),
    ({"train": [], "validation": [{"input": "a", "output": "1"}]}, "train is empty"),
    ({"train": [{"input": "a"}], "validation": [{"input": "b", "output": "1"}]}, r"train\[0\]"),
    ({"train": [{"input": "a", "output": "1"}], "validation": [{"input": "a", "output": "1"}]}, "disjoint"),
    ({"train": [{"input": "a", "output": "2"}], "validation": [{"input": "b", "output": "1"}]}, "not one of"),
    ({"train": [{"input": "a", "output": "1"}], "validation": [{"input": "b", "output": "1"}], "x": 1}, "unknown"),
])
def test_dataset_shape_names_the_first_bad_row(data, problem):
    with pytest.raises(CkError, match=problem):
        check_dataset_shape(data, "d.json", labels={"0", "1"})


def test_good_dataset_shape_passes():
    check_dataset_shape({"train": [{"input": "a", "output": "1"}], "validation": [{"input": "b", "output": "0"}]},
                        "d.json", labels={"0", "1"})


def test_bit_sequences_validation_refuses_strings_of_another_length():
    check = get_check("bit_sequences")
    args = check.Args(bit_length=4, N=10, val_size=1, bit_parity=True, p=0.0)
    good = {"train": [{"input": "0101", "output": "0"}], "validation": [{"input": "1111", "output": "0"}]}
    check.validate_dataset(args, good, Path("d.json"))
    bad = {"train": [{"input": "0101", "output": "0"}, {"input": "011", "output": "0"}],
           "validation": [{"input": "1111", "output": "0"}]}
    with pytest.raises(CkError, match=r"train\[1\].*4 bits"):
        check.validate_dataset(args, bad, Path("d.json"))


def _metrics(acc: float) -> list[dict]:
    rows = [{"event": "train", "step": s, "epoch": 0, "train_answer_loss": 0.01, "train_answer_acc": acc} for s in (2, 4, 6, 8)]
    rows.append({"event": "val", "step": 8, "val_answer_loss": 0.01, "val_answer_acc": acc, "val_examples": 4, "final": True})
    return rows + [{"event": "end", "step": 8}]


def test_the_fixture_check_gives_its_own_verdict():
    constant = _constant_module().CHECK
    data = {"train": [{"input": "aaab", "output": "1"}], "validation": [{"input": s, "output": "1"} for s in "abcd"]}
    expectation = Expectation(kind="learnable", floor_nats=0.0, target_accuracy=0.99, check=constant,
                              args=constant.Args(N=5, val_size=4))
    right = [{"input": s, "target": "1", "predicted": "1", "answer_loss": 0.01} for s in "abcd"]
    summary = judge_run("r", _metrics(1.0), right, data, expectation)
    assert summary.verdict == PASS and summary.reason.startswith("constant check:") and summary.rule == "constant"
    wrong = right[:3] + [{"input": "d", "target": "1", "predicted": "0", "answer_loss": 3.0}]
    summary = judge_run("r", _metrics(0.75), wrong, data, expectation)
    assert summary.verdict == FAIL and summary.reason.startswith("constant check:")


def test_the_fixture_check_is_found_through_the_entry_point(tmp_path):
    listed = _ck("sanity-check", "--help", cwd=tmp_path)
    assert listed.returncode == 0 and "constant" in listed.stdout
    without = _ck("sanity-check", "--help", cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert "constant" not in without.stdout.split("Registered checks:")[1]


@pytest.mark.training
def test_a_check_outside_the_core_runs_end_to_end(tmp_path):
    """`ck sanity-check constant`: design, scaffold (its data), real training on the tiny model, its verdict."""
    scratch, data_dir = tmp_path / "scratch", tmp_path / "data"
    env = _with_fixture_env() | {"CK_DATA_DIR": str(data_dir)}
    done = _ck("sanity-check", "constant", "--scratch", str(scratch), "--executor", "local", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "constant check: accuracy" in done.stdout and "sanity check PASSED" in done.stdout
    (exp_dir,) = (scratch / "ck-sanity-checks").iterdir()
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert [r["verdict"] for r in summary["runs"]] == ["PASS"] and summary["runs"][0]["rule"] == "constant"
    plan = (exp_dir / "experiment_summary.md").read_text()
    assert "check: constant" in plan
    (dataset,) = data_dir.glob("constant*.json")
    data = json.loads(dataset.read_text())
    assert {r["output"] for split in data.values() for r in split} == {"1"}
