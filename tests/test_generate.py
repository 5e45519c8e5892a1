"""Bit-sequences generator: equality with the seed's algorithm, properties, errors, CLI, provenance."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cruijff_kit.cli import main as ck_main
from cruijff_kit.errors import CkError
from sanity_checks.bit_sequences.generator import (
    MAX_BIT_LENGTH,
    generate_bit_sequences,
    parse_bool,
    provenance_matches,
    provenance_path_for,
    read_provenance,
    sample_bit_sequences,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[1]
SANITY_DIR = REPO / "sanity_checks" / "bit_sequences"
CK = Path(sys.executable).parent / "ck"

# The seed README's two Step 0 commands, verbatim (the second runs in the folder the first cd's into).
README_PARITY = "python generate.py --bit_length 15 --N 33000 --p 0 --bit_parity True --val_size 4000 --output parity.json"
README_PROB = "python generate.py --bit_length 15 --N 33000 --p 0.5 --bit_parity False --val_size 4000 --output prob_p05.json"


# ---- REFERENCE IMPLEMENTATION (test-only): the seed's algorithm a-c, building the 2^n list ----
def reference_bit_sequences(bit_length, N, val_size, bit_parity, p=0.0, seed=42):
    rng = np.random.RandomState(seed)
    all_strings = ["".join(bits) for bits in itertools.product("01", repeat=bit_length)]
    rows = [str(s) for s in rng.choice(all_strings, size=N)]
    val_positions = set(rng.choice(N, size=val_size, replace=False).tolist())
    validation = [rows[i] for i in range(N) if i in val_positions]
    validation_strings = set(validation)
    train = [rows[i] for i in range(N) if i not in val_positions and rows[i] not in validation_strings]

    def label(bits):
        draw = rng.rand()
        if bit_parity:
            return str((bits.count("1") % 2) ^ int(draw < p))
        return str(int(draw < p))

    train_rows = [{"instruction": "", "input": s, "output": label(s)} for s in train]
    validation_rows = [{"instruction": "", "input": s, "output": label(s)} for s in validation]
    return {"train": train_rows, "validation": validation_rows}
# ---- end of reference implementation ----


def run_cli(argv, capsys):
    rc = ck_main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def flags(**overrides):
    values = {"bit_length": "10", "N": "2000", "val_size": "100", "bit_parity": "True", "p": "0", "seed": "42",
              "output": "d.json"}
    values.update(overrides)
    argv = []
    for name, value in values.items():
        if value is not None:
            argv += [f"--{name}", value]
    return argv


@pytest.mark.parametrize(
    "bit_length,N,val_size,p,bit_parity,seed",
    [
        (5, 100, 10, 0.0, True, 42),
        (8, 3000, 64, 0.5, False, 1),
        (10, 5000, 700, 0.2, True, 7),
        (2, 40, 1, 0.0, True, 3),
        (12, 4000, 3000, 0.9, False, 12345),
        (16, 20000, 4000, 0.1, True, 2**32 - 1),
    ],
)
def test_equals_reference_implementation(bit_length, N, val_size, p, bit_parity, seed):
    expected = reference_bit_sequences(bit_length, N, val_size, bit_parity, p, seed)
    assert generate_bit_sequences(bit_length, N, val_size, bit_parity, p, seed) == expected


def test_written_file_equals_reference(tmp_path):
    args = dict(bit_length=9, N=3000, val_size=300, bit_parity=True, p=0.25, seed=5)
    result = write_dataset(**args, output="x.json", output_dir=tmp_path)
    assert json.loads(result.path.read_text()) == reference_bit_sequences(**args)


def test_long_strings_follow_randint(tmp_path):
    # beyond what a list can hold the data is still randint's integers, written MSB first
    for bit_length in (40, 62, MAX_BIT_LENGTH):
        data = generate_bit_sequences(bit_length, 500, 50, True, 0.0, seed=9)
        rng = np.random.RandomState(9)
        values = rng.randint(0, 2**bit_length, size=500)
        positions = set(rng.permutation(500)[:50].tolist())
        expected_validation = [format(int(v), f"0{bit_length}b") for i, v in enumerate(values) if i in positions]
        assert [row["input"] for row in data["validation"]] == expected_validation
        assert len(data["train"]) == 450  # collisions are astronomically unlikely here
        assert all(len(row["input"]) == bit_length for row in data["train"])


def test_splits_disjoint_and_parity_rule():
    splits = sample_bit_sequences(8, 5000, 500, True, 0.0, seed=11)
    data = splits.to_dict()
    train_strings = {row["input"] for row in data["train"]}
    validation_strings = {row["input"] for row in data["validation"]}
    assert not train_strings & validation_strings
    assert len(data["validation"]) == 500
    assert len(data["train"]) + splits.removed_by_dedup == 4500
    assert splits.removed_by_dedup > 0
    for row in data["train"] + data["validation"]:
        assert row["instruction"] == ""
        assert row["output"] == str(row["input"].count("1") % 2)


@pytest.mark.parametrize("bit_parity,p", [(True, 0.3), (False, 0.2), (False, 0.5), (True, 1.0), (False, 0.0)])
def test_noise_and_bernoulli_rates(bit_parity, p):
    data = generate_bit_sequences(30, 40000, 4000, bit_parity, p, seed=21)
    rows = data["train"] + data["validation"]
    if bit_parity:
        hits = sum(row["output"] != str(row["input"].count("1") % 2) for row in rows)  # flipped labels
    else:
        hits = sum(row["output"] == "1" for row in rows)
    rate = hits / len(rows)
    tolerance = 5 * (p * (1 - p) / len(rows)) ** 0.5
    assert abs(rate - p) <= tolerance, (rate, p)


def test_determinism_by_seed(tmp_path):
    first = write_dataset(12, 3000, 300, False, 0.5, seed=1, output="a.json", output_dir=tmp_path / "1")
    again = write_dataset(12, 3000, 300, False, 0.5, seed=1, output="a.json", output_dir=tmp_path / "2")
    other = write_dataset(12, 3000, 300, False, 0.5, seed=2, output="a.json", output_dir=tmp_path / "3")
    assert first.path.read_bytes() == again.path.read_bytes()
    assert first.sha256 == again.sha256 != other.sha256


@pytest.mark.parametrize("word,value", [("True", True), ("true", True), ("T", True), ("1", True),
                                        ("FALSE", False), ("f", False), ("0", False), (True, True)])
def test_bit_parity_words(word, value):
    assert parse_bool("--bit_parity", word) is value


def test_cli_writes_file_counts_and_provenance(tmp_path, capsys):
    rc, out, err = run_cli(["generate", "bit-sequences", *flags(output_dir=str(tmp_path))], capsys)
    assert rc == 0, err
    path = tmp_path / "d.json"
    data = json.loads(path.read_text())
    assert data == generate_bit_sequences(10, 2000, 100, True, 0.0, 42)
    record = read_provenance(path)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["counts"]["train"] == len(data["train"]) and record["counts"]["validation"] == 100
    assert record["counts"]["validation_distinct"] == len({r["input"] for r in data["validation"]})
    assert record["arguments"] == {"bit_length": 10, "N": 2000, "val_size": 100, "bit_parity": True,
                                   "p": 0.0, "seed": 42}
    assert str(path) in out and f"{len(data['train'])} rows" in out
    assert f"{record['counts']['removed_by_dedup']} rows removed" in out and "label balance" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.json.provenance.json"]  # no temp files


def test_provenance_matches(tmp_path):
    args = {"bit_length": 10, "N": 2000, "val_size": 100, "bit_parity": True, "p": 0.0, "seed": 42}
    result = write_dataset(**args, output="d.json", output_dir=tmp_path)
    assert result.provenance_path == provenance_path_for(result.path)
    assert read_provenance(result.provenance_path) == read_provenance(result.path)
    assert provenance_matches(result.path, args)
    assert provenance_matches(result.path, {**args, "bit_parity": "true", "p": "0", "model": "ignored"})
    assert not provenance_matches(result.path, {**args, "seed": 43})
    assert not provenance_matches(result.path, {**args, "p": 0.1})
    assert not provenance_matches(tmp_path / "missing.json", args)
    result.path.write_bytes(result.path.read_bytes().replace(b'"output": "0"', b'"output": "1"', 1))
    assert not provenance_matches(result.path, args)
    result.provenance_path.unlink()
    assert not provenance_matches(result.path, args)
    with pytest.raises(CkError):
        read_provenance(result.path)


BAD_FLAGS = [
    ("--bit_length", {"bit_length": "0"}),
    ("--bit_length", {"bit_length": str(MAX_BIT_LENGTH + 1)}),
    ("--bit_length", {"bit_length": "ten"}),
    ("--bit_length", {"bit_length": None}),
    ("--N", {"N": "0"}),
    ("--N", {"N": "1e6"}),
    ("--val_size", {"val_size": "0"}),
    ("--val_size", {"val_size": "2000"}),
    ("--val_size", {"val_size": "-5"}),
    ("--bit_parity", {"bit_parity": "maybe"}),
    ("--bit_parity", {"bit_parity": None}),
    ("--p", {"p": "-0.1"}),
    ("--p", {"p": "1.5"}),
    ("--p", {"p": "nan"}),
    ("--p", {"p": "half"}),
    ("--seed", {"seed": "-1"}),
    ("--seed", {"seed": str(2**32)}),
    ("--output", {"output": None}),
    ("--output", {"output": "sub/d.json"}),
    ("--output", {"output": ".."}),
    ("--val_size", {"bit_length": "1", "N": "100", "val_size": "60"}),  # de-duplication empties train
]


@pytest.mark.parametrize("flag,overrides", BAD_FLAGS)
def test_bad_input_is_one_line_exit_2_no_file(tmp_path, capsys, flag, overrides):
    out_dir = tmp_path / "out"
    rc, _, err = run_cli(["generate", "bit-sequences", *flags(output_dir=str(out_dir), **overrides)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ck generate: error: {flag}=") and "fix:" in lines[0]
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, _, err = run_cli(["generate", "bit-sequences", *flags(output_dir=str(blocker / "sub"))], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--output_dir=" in err and "fix:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_ck_subprocess_error_and_success(tmp_path):
    bad = subprocess.run([str(CK), "generate", "bit-sequences", *flags(p="2", output_dir=str(tmp_path))],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--p='2'" in bad.stderr and list(tmp_path.iterdir()) == []
    good = subprocess.run([str(CK), "generate", "bit-sequences", *flags(output_dir=str(tmp_path))],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert provenance_matches(tmp_path / "d.json", {"bit_length": 10, "N": 2000, "val_size": 100, "bit_parity": True})


def _run_readme_command(command: str, cwd: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    argv = [sys.executable if word == "python" else word for word in shlex.split(command)] + list(extra)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)


def test_readme_commands_from_sanity_folder(tmp_path):
    for command, args in [
        (README_PARITY, dict(bit_length=15, N=33000, val_size=4000, bit_parity=True, p=0.0)),
        (README_PROB, dict(bit_length=15, N=33000, val_size=4000, bit_parity=False, p=0.5)),
    ]:
        proc = _run_readme_command(command, SANITY_DIR, ["--output_dir", str(tmp_path)])
        assert proc.returncode == 0, proc.stderr
        output = shlex.split(command)[-1]
        written = tmp_path / output
        assert str(written) in proc.stdout
        assert json.loads(written.read_text()) == generate_bit_sequences(**args)
        assert provenance_matches(written, args)


def test_readme_command_verbatim_in_a_copied_checkout(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "cruijff_kit", checkout / "cruijff_kit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")
    shutil.copytree(REPO / "sanity_checks", checkout / "sanity_checks", ignore=shutil.ignore_patterns("__pycache__"))
    proc = _run_readme_command(README_PARITY, checkout / "sanity_checks" / "bit_sequences")
    assert proc.returncode == 0, proc.stderr
    written = checkout / "data" / "green" / "bit_sequences" / "parity.json"  # the default output dir
    assert str(written) in proc.stdout
    data = json.loads(written.read_text())
    assert len(data["validation"]) == 4000 and data["train"]
    assert written.read_bytes() == write_dataset(15, 33000, 4000, True, 0.0, output="p.json",
                                                 output_dir=tmp_path / "lib").path.read_bytes()


def test_output_that_is_a_directory(tmp_path, capsys):
    (tmp_path / "d.json").mkdir()
    rc, _, err = run_cli(["generate", "bit-sequences", *flags(output_dir=str(tmp_path))], capsys)
    assert rc == 2 and err.startswith("ck generate: error: --output='d.json'") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"] and not any((tmp_path / "d.json").iterdir())


def test_script_runs_from_repository_root(tmp_path):
    command = README_PROB.replace("generate.py", "sanity_checks/bit_sequences/generate.py")
    proc = _run_readme_command(command, REPO, ["--output_dir", str(tmp_path), "--seed", "7"])
    assert proc.returncode == 0, proc.stderr
    expected = generate_bit_sequences(15, 33000, 4000, False, 0.5, seed=7)
    assert json.loads((tmp_path / "prob_p05.json").read_text()) == expected
