"""Several processes, several nodes: the layout keys (gpus, nodes, procs_per_node), the recipe the layout
picks, design-time refusals, and the launch part of finetune.slurm for each layout. (Real training on
several processes: tests/test_scaleout_runs.py.)"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from cruijff_kit import run_config as rc
from cruijff_kit.errors import CkError
from cruijff_kit.settings import load_settings
from cruijff_kit.tools.torchtune import setup_finetune as sf

CK = [sys.executable, "-m", "cruijff_kit"]
NASTY = "a b'c\"$(touch PWNED)`touch PWNED`;#x%j"


@pytest.fixture
def settings(tmp_path):
    env = {"CK_SCRATCH": str(tmp_path / "scratch"), "CK_DATA_DIR": str(tmp_path / "data"), "CK_VENV": ""}
    return load_settings(env=env, path=tmp_path / "no-settings.yaml")


def render(tmp_path, settings, **setup):
    base = {"dataset_label": "parity", "model": "ck-tiny-llama", "venv": ""}
    return sf.render_run({**base, **setup}, tmp_path / "exp" / "run", settings=settings, write=False)


def launch_lines(slurm: str) -> list[str]:
    return [line.strip() for line in slurm.splitlines()
            if line.strip().startswith(("tune run", "srun"))]


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gpus=st.integers(0, 4), nodes=st.integers(1, 3), procs=st.one_of(st.none(), st.integers(1, 4)))
def test_the_layout_picks_the_recipe_and_the_launcher(tmp_path, settings, gpus, nodes, procs):
    setup = {"gpus": gpus, "nodes": nodes, "device": "cpu"} | ({} if procs is None else {"procs_per_node": procs})
    config = render(tmp_path, settings, **setup).config
    per_node = procs if procs is not None else max(gpus, 1)
    assert config.procs_per_node == per_node
    one_process = nodes * per_node == 1
    assert config.custom_recipe == (rc.DEFAULT_RECIPE if one_process else rc.DISTRIBUTED_RECIPE)
    assert sf.launch(config) == ("one_process" if one_process else "one_node" if nodes == 1 else "nodes")


def test_one_process_script_is_the_seeds(tmp_path, settings):
    slurm = render(tmp_path, settings).files["finetune.slurm"]
    root, recipe = sf.recipe_invocation(rc.DEFAULT_RECIPE)
    assert "#SBATCH --nodes=1\n#SBATCH --ntasks=1\n" in slurm and "--ntasks-per-node" not in slurm
    assert launch_lines(slurm) == [f'tune run {recipe} --config "$RUN_DIR/finetune.yaml" "${{RESUME_ARG[@]}}"']


def test_cpu_processes_on_one_node_ask_for_no_gpu(tmp_path, settings):
    result = render(tmp_path, settings, procs_per_node=2)
    slurm = result.files["finetune.slurm"]
    _, recipe = sf.recipe_invocation(rc.DISTRIBUTED_RECIPE)
    assert "--gres" not in slurm and "#SBATCH --nodes=1\n" in slurm
    assert launch_lines(slurm) == [f'tune run --nproc_per_node=2 {recipe} --config "$RUN_DIR/finetune.yaml" "${{RESUME_ARG[@]}}"']
    assert result.config.device == "cpu" and result.config.gpus == 0


def test_gpus_on_one_node_run_one_process_each(tmp_path, settings):
    result = render(tmp_path, settings, gpus=4, device="cuda")
    assert "#SBATCH --gres=gpu:4" in result.files["finetune.slurm"]
    assert "tune run --nproc_per_node=4 " in result.files["finetune.slurm"]
    assert result.config.custom_recipe == rc.DISTRIBUTED_RECIPE


def test_several_nodes_srun_one_torchrun_each_with_a_c10d_rendezvous(tmp_path, settings):
    result = render(tmp_path, settings, nodes=2, gpus=8, device="cuda")
    slurm = result.files["finetune.slurm"]
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n" in slurm and "#SBATCH --ntasks=1" not in slurm
    assert "#SBATCH --gres=gpu:8" in slurm  # per node
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in slurm
    assert "rdzv_port=$((20000 + SLURM_JOB_ID % 20000))" in slurm
    srun = slurm[slurm.index("srun "):].split("\nelse")[0]
    for part in ("--ntasks-per-node=1", "--kill-on-bad-exit=1", "tune run --nnodes=2 --nproc_per_node=8",
                 "--rdzv_backend=c10d", '--rdzv_endpoint="$rdzv_host:$rdzv_port"'):
        assert part in srun, part
    proc = subprocess.run(["bash", "-n"], input=slurm, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_several_nodes_without_slurm_train_on_this_node_and_stay_inert(tmp_path, settings):
    """The local executor runs finetune.slurm with no SLURM environment: one node, its processes; names full
    of shell syntax arrive intact (a fake `tune` records its arguments)."""
    weird = tmp_path / "we ird $(touch PWNED) `touch PWNED`"
    bin_dir = weird / "bin"
    bin_dir.mkdir(parents=True)
    record = tmp_path / "tune-args.json"
    fake_tune = bin_dir / "tune"
    fake_tune.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
                         "sys.exit(3)\n")
    fake_tune.chmod(fake_tune.stat().st_mode | stat.S_IXUSR)
    run_dir = weird / "exp $(touch PWNED)" / "run"
    sf.render_run({"dataset_label": "parity", "model": "ck-tiny-llama", "venv": "", "my_wandb_run_name": NASTY,
                   "output_dir_base": str(weird / "out"), "nodes": 3, "procs_per_node": 2}, run_dir, settings=settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    proc = subprocess.run(["bash", "finetune.slurm"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "not in a SLURM allocation of 3 nodes" in proc.stdout
    _, recipe = sf.recipe_invocation(rc.DISTRIBUTED_RECIPE)
    assert json.loads(record.read_text()) == ["run", "--nproc_per_node=2", recipe, "--config",
                                              str(run_dir / "finetune.yaml")]
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()


@pytest.mark.parametrize("setup, field", [
    ({"procs_per_node": 2, "custom_recipe": rc.DEFAULT_RECIPE}, "custom_recipe"),
    ({"nodes": 2, "custom_recipe": "lora_finetune_single_device"}, "custom_recipe"),
    ({"gpus": 2, "device": "cuda", "custom_recipe": rc.DEFAULT_RECIPE}, "custom_recipe"),
    ({"gpus": 2, "device": "cuda", "procs_per_node": 3}, "procs_per_node"),
    ({"nodes": 0}, "nodes"),
    ({"procs_per_node": 0}, "procs_per_node"),
])
def test_a_layout_that_cannot_run_is_refused_at_render_time(tmp_path, settings, setup, field):
    with pytest.raises(CkError) as err:
        render(tmp_path, settings, **setup)
    assert err.value.field == field and err.value.fix


def test_explicit_distributed_recipe_on_one_process_runs_under_torchrun(tmp_path, settings):
    result = render(tmp_path, settings, custom_recipe=rc.DISTRIBUTED_RECIPE)
    assert sf.launch(result.config) == "one_node"
    assert "tune run --nproc_per_node=1 " in result.files["finetune.slurm"]


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CK_")}
    env.update(CK_SCRATCH=str(tmp_path / "scratch"), CK_CONFIG=str(tmp_path / "settings.yaml"),
               CK_DATA_DIR=str(tmp_path / "data"), CK_VENV="")
    return env


def test_design_refuses_a_single_device_recipe_on_two_processes_and_writes_nothing(tmp_path):
    proc = subprocess.run([*CK, "design", "bit-sequences", "--preset", "embedded", "--yes", "--name", "bad",
                           "--procs-per-node", "2", "--custom-recipe", rc.DEFAULT_RECIPE],
                          env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "custom_recipe" in proc.stderr and "trains on one device" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "scratch" / "ck-sanity-checks" / "bad").exists()


def test_design_and_scaffold_carry_the_layout_into_setup_finetune(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run([*CK, "design", "bit-sequences", "--preset", "embedded", "--yes", "--name", "two",
                           "--nodes", "2", "--procs-per-node", "2", "--N", "200", "--val-size", "8"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    exp = tmp_path / "scratch" / "ck-sanity-checks" / "two"
    from cruijff_kit.experiment import Experiment

    compute = Experiment.load(exp).runs[0].compute
    assert (compute.nodes, compute.procs_per_node, compute.custom_recipe, compute.processes) == (2, 2, None, 4)
    assert "| parity_run | 2 | 0 | 4 |" in (exp / "experiment_summary.md").read_text()
    proc = subprocess.run([*CK, "scaffold", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    setup = yaml.safe_load((exp / "parity_run" / "setup_finetune.yaml").read_text())
    assert (setup["nodes"], setup["procs_per_node"], setup["gpus"]) == (2, 2, 0)
    assert setup["custom_recipe"] == rc.DISTRIBUTED_RECIPE
    slurm = (exp / "parity_run" / "finetune.slurm").read_text()
    assert "#SBATCH --nodes=2" in slurm and "--gres" not in slurm and "--nnodes=2 --nproc_per_node=2" in slurm


def test_seed_scaffold_keeps_one_process_and_the_single_device_recipe(tmp_path):
    from cruijff_kit.design import build_plan
    from cruijff_kit.scaffold import setup_for_run

    settings = load_settings(env={"CK_SCRATCH": str(tmp_path)}, path=tmp_path / "none.yaml")
    exp = build_plan("bit_sequences", "seed", settings=settings)
    setup = setup_for_run(exp, exp.runs[0], settings)
    assert setup["custom_recipe"] == rc.DEFAULT_RECIPE and setup["nodes"] == 1 and "procs_per_node" not in setup
    assert setup["gpus"] == 1
