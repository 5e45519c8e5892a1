"""`ck scaffold`: datasets, run directories and configs from a plan; idempotent; changes only with --force."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cruijff_kit import explog
from cruijff_kit.experiment import Experiment
from sanity_checks.bit_sequences.generator import provenance_matches, write_dataset
from cruijff_kit.markdown_sections import get_section
from cruijff_kit.scaffold import ScaffoldConflict, scaffold_experiment
from cruijff_kit.settings import load_settings
from sanity_checks.bit_sequences.check import BitSequenceArgs, expected_for

SMALL = {"bit_length": 6, "N": 200, "val_size": 16, "seed": 42}


def make_plan(tmp_path: Path, model: str = "Llama-3.2-1B-Instruct", epochs: int = 1) -> Experiment:
    """Two runs (parity, bernoulli) on tiny generated datasets, written to experiment_summary.md."""
    scratch = tmp_path / "scratch"
    name = "sanity_check_bit_sequences_2025-10-28"
    gpus = 0 if model == "ck-tiny-llama" else 1
    runs = []
    for run_name, label, parity, p in (("parity_run", "parity", True, 0.0), ("probabilistic_run", "prob_p05", False, 0.5)):
        gen = BitSequenceArgs(bit_parity=parity, p=p, **SMALL)
        runs.append({
            "name": run_name, "model": model,
            "dataset": {"label": label, "generator": gen.model_dump()},
            "hyper": {"epochs": epochs, "batch_size": 4, "lora_rank": 8, "lr": 3e-3, "num_warmup_steps": 2,
                      "log_every_n_steps": 1, "run_val_every_n_steps": 10, "train_on_input": True},
            "compute": {"gpus": gpus, "time": "00:10:00", "mem": "4G"},
            "expected": expected_for(gen).model_dump(),
        })
    exp = Experiment.from_plan_dict({
        "name": name, "kind": "sanity_check", "date": "2025-10-28", "purpose": "test",
        "experiment_dir": str(scratch / "ck-sanity-checks" / name),
        "output_root": str(scratch / "ck-outputs" / name),
        "models_dir": str(scratch / "models"), "data_dir": str(tmp_path / "data"),
        "wandb_project": "bit_sequences_2025-10-28", "runs": runs,
    })
    exp.write()
    return exp


@pytest.fixture
def settings(tmp_path):
    env = {"CK_SCRATCH": str(tmp_path / "scratch"), "CK_VENV": "", "CK_CONDA_ENV": "ck"}
    return load_settings(env=env, path=tmp_path / "no-settings.yaml")


def snapshot(*roots: Path) -> dict[Path, tuple[bytes, int]]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.endswith(".log") and not path.name.endswith(".lock"):
                out[path] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def actions(exp: Experiment) -> list[str]:
    return [e.action for e in explog.read_log(exp.experiment_dir, "scaffold")]


def test_scaffold_creates_runs_datasets_and_summary(tmp_path, settings):
    exp = make_plan(tmp_path)
    result = scaffold_experiment(exp.experiment_dir, settings=settings, progress=False)
    assert [r.name for r in result.runs] == ["parity_run", "probabilistic_run"] and result.changed
    for run in exp.runs:
        run_dir = exp.run_dir(run.name)
        setup = yaml.safe_load((run_dir / "setup_finetune.yaml").read_text())
        assert setup["my_wandb_run_name"] == run.name and setup["dataset_label"] == run.dataset.label
        assert setup["train_on_input"] is True and setup["conda_env"] == "ck"
        cfg = yaml.safe_load((run_dir / "finetune.yaml").read_text())
        assert cfg["dataset"]["data_files"] == str(run.dataset.dataset_path(exp))
        assert cfg["output_dir"] == str(exp.run_output_dir(run.name))
        assert exp.run_output_dir(run.name).is_dir()
        assert provenance_matches(run.dataset.dataset_path(exp), run.dataset.generator)
        slurm = (run_dir / "finetune.slurm").read_text()
        assert "conda activate ck" in slurm and f"--output={exp.run_output_dir(run.name)}/slurm-%j.out" in slurm
        proc = subprocess.run(["bash", "-n", str(run_dir / "finetune.slurm")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    section = get_section(exp.summary_path().read_text(), "Run directories")
    assert str(exp.run_dir("parity_run")) in section and str(exp.run_output_dir("probabilistic_run")) in section
    assert Experiment.load(exp.experiment_dir) == exp  # the plan block is untouched
    logged = actions(exp)
    assert logged.count("GENERATE_DATA") == 2 and logged.count("CREATE_RUN_DIR") == 2 and logged.count("RENDER_CONFIG") == 2
    assert logged[-1] == "SCAFFOLD_COMPLETE"
    assert any("Llama-3.2-1B-Instruct" in w for w in result.warnings)  # not downloaded here: a warning, not an error
    assert "ck run" in result.summary()


def test_rescaffolding_an_unchanged_plan_changes_nothing(tmp_path, settings):
    exp = make_plan(tmp_path)
    scaffold_experiment(exp.experiment_dir, settings=settings, progress=False)
    before = snapshot(Path(exp.experiment_dir), Path(exp.output_root), tmp_path / "data")
    result = scaffold_experiment(exp.name, settings=settings, progress=False)  # by name, under the scratch
    assert result.exp_dir == Path(exp.experiment_dir)
    assert snapshot(Path(exp.experiment_dir), Path(exp.output_root), tmp_path / "data") == before
    assert not result.changed and "nothing changed" in result.summary()
    assert actions(exp)[-3:] == ["REUSE_DATA", "REUSE_DATA", "SCAFFOLD_UNCHANGED"]


def test_changed_plan_is_refused_with_a_diff_unless_forced(tmp_path, settings):
    exp = make_plan(tmp_path)
    scaffold_experiment(exp.experiment_dir, settings=settings, progress=False)
    changed = make_plan(tmp_path, epochs=3)
    before = snapshot(Path(exp.experiment_dir))
    with pytest.raises(ScaffoldConflict) as err:
        scaffold_experiment(exp.experiment_dir, settings=settings, progress=False)
    assert "-epochs: 1\n+epochs: 3\n" in err.value.diff and "--force" in str(err.value)
    assert snapshot(Path(exp.experiment_dir)) == before
    assert actions(exp)[-1] == "REFUSE_CHANGES"

    env = {k: v for k, v in os.environ.items() if not k.startswith("CK_")}
    env.update(CK_CONFIG=str(tmp_path / "no-settings.yaml"), CK_SCRATCH=str(tmp_path / "scratch"), CK_VENV="", CK_CONDA_ENV="ck")
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "scaffold", exp.experiment_dir, "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "+epochs: 3" in proc.stdout and "--force" in proc.stderr

    result = scaffold_experiment(exp.experiment_dir, force=True, settings=settings, progress=False)
    assert all(r.changed_files == ["setup_finetune.yaml", "finetune.yaml"] for r in result.runs)
    cfg = yaml.safe_load((changed.run_dir("parity_run") / "finetune.yaml").read_text())
    assert cfg["epochs"] == 3


def test_dataset_reused_only_when_provenance_matches(tmp_path, settings):
    exp = make_plan(tmp_path)
    parity, prob = (run.dataset.dataset_path(exp) for run in exp.runs)
    write_dataset(output=parity.name, output_dir=parity.parent, bit_parity=True, p=0.0, **SMALL)
    other = {**SMALL, "seed": 7}
    write_dataset(output=prob.name, output_dir=prob.parent, bit_parity=False, p=0.5, **other)  # same name, other data
    parity_mtime = parity.stat().st_mtime_ns
    result = scaffold_experiment(exp.experiment_dir, settings=settings, progress=False)
    assert result.reused == [parity] and result.generated == [prob]
    assert parity.stat().st_mtime_ns == parity_mtime
    assert provenance_matches(prob, exp.runs[1].dataset.generator)
    entries = {e.action: e for e in explog.read_log(exp.experiment_dir, "scaffold")}
    assert "provenance does not match" in entries["GENERATE_DATA"].fields["Explanation"]


def test_embedded_model_is_built_when_missing(tmp_path, settings):
    exp = make_plan(tmp_path, model="ck-tiny-llama")
    result = scaffold_experiment(exp.experiment_dir, settings=settings, progress=False)
    model_dir = Path(exp.models_dir) / "ck-tiny-llama"
    assert result.built_model == model_dir and (model_dir / "model.safetensors").is_file()
    assert "BUILD_MODEL" in actions(exp) and not result.warnings
    again = scaffold_experiment(exp.experiment_dir, settings=settings, progress=False)
    assert again.built_model is None and not again.changed
