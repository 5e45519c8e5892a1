"""`ck sanity-check bit_sequences`: the README's first command, end to end, plus its small decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cruijff_kit.errors import CkError
from cruijff_kit.sanity_check import choose_preset, fresh_experiment_name, normalize_check_name
from cruijff_kit.settings import load_settings
from sanity_checks.bit_sequences import CHECK as BITS

REPO = Path(__file__).resolve().parents[1]


def _settings(tmp_path, **flags):
    return load_settings({"scratch": str(tmp_path / "scratch"), **flags}, env={}, path=tmp_path / "settings.yaml")


def test_fresh_name_adds_a_suffix_when_todays_dir_exists(tmp_path):
    scratch = tmp_path / "scratch"
    assert fresh_experiment_name(scratch, "sc") == "sc"
    (scratch / "ck-sanity-checks" / "sc").mkdir(parents=True)
    assert fresh_experiment_name(scratch, "sc") == "sc_2"
    (scratch / "ck-outputs" / "sc_2").mkdir(parents=True)  # outputs left from a deleted experiment
    assert fresh_experiment_name(scratch, "sc") == "sc_3"


def test_preset_is_seed_only_on_a_cluster_with_the_real_model(tmp_path):
    models = tmp_path / "models"
    settings = _settings(tmp_path, models_dir=str(models))
    assert choose_preset(BITS, settings, "local") == "embedded"
    assert choose_preset(BITS, settings, "slurm") == "embedded"  # no model directory
    (models / "Llama-3.2-1B-Instruct").mkdir(parents=True)
    (models / "Llama-3.2-1B-Instruct" / "config.json").write_text("{}")
    assert choose_preset(BITS, settings, "slurm") == "seed"
    assert choose_preset(BITS, settings, "local") == "embedded"


def test_unknown_check_is_a_one_line_error():
    assert normalize_check_name("bit-sequences") == "bit_sequences"
    with pytest.raises(CkError, match="unknown sanity check"):
        normalize_check_name("coin_flips")


@pytest.mark.training
def test_sanity_check_end_to_end_passes(tmp_path):
    env = dict(os.environ)
    env.update({
        "CK_SCRATCH": str(tmp_path / "scratch"),
        "CK_CONFIG": str(tmp_path / "settings.yaml"),
        "CK_DATA_DIR": str(tmp_path / "data"),
        "CK_EXECUTOR": "local",
        "WANDB_MODE": "offline",
    })
    env.pop("CK_MODELS_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "sanity-check", "bit_sequences"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for k in range(1, 5):
        assert f"step {k}/4" in proc.stdout
    checks = list((tmp_path / "scratch" / "ck-sanity-checks").iterdir())
    assert len(checks) == 1
    exp_dir = checks[0]
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert {r["name"]: r["verdict"] for r in summary["runs"]} == {"parity_run": "PASS", "probabilistic_run": "PASS"}
    for png in ["parity_run.png", "probabilistic_run.png", "comparison.png"]:
        assert (exp_dir / "plots" / png).stat().st_size > 5000
    assert "## Results" in (exp_dir / "experiment_summary.md").read_text()


def test_an_existing_explicit_name_is_refused_before_anything_runs(tmp_path):
    from cruijff_kit.sanity_check import run_sanity_check

    settings = _settings(tmp_path)
    existing = Path(settings.scratch) / "ck-sanity-checks" / "mine"
    existing.mkdir(parents=True)

    def must_not_run(*args, **kwargs):
        raise AssertionError("run_experiment was called")

    with pytest.raises(CkError, match="already exists"):
        run_sanity_check("bit_sequences", settings=settings, exp_name="mine", run_experiment=must_not_run)
    assert list(existing.iterdir()) == []
