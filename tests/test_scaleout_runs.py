"""Several training processes for real: the embedded tiny model, designed and scaffolded by `ck`, run by
`ck run` on gloo processes (CPU, no GPU requested): 2 processes on 1 node with the local executor and on
the local SLURM, 2 nodes on the 2-node local SLURM, and a rank killed mid-training."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cruijff_kit.run_config import DISTRIBUTED_RECIPE
from test_slurm_multinode import two_nodes  # noqa: F401  (fixture)

CK = [sys.executable, "-m", "cruijff_kit"]
SMALL = ["--N", "200", "--val-size", "8", "--epochs", "1", "--max-steps-per-epoch", "4",
         "--run-val-every-n-steps", "2", "--log-every-n-steps", "1", "--batch-size", "4", "--batch-size-val", "3"]


def ck_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CK_")}
    env.update(CK_SCRATCH=str(tmp_path / "scratch"), CK_CONFIG=str(tmp_path / "settings.yaml"),
               CK_DATA_DIR=str(tmp_path / "data"), WANDB_MODE="offline", **extra)
    return env


def design_and_scaffold(tmp_path: Path, env: dict[str, str], name: str, *flags: str) -> Path:
    design = subprocess.run([*CK, "design", "bit-sequences", "--preset", "embedded", "--yes", "--name", name, *flags],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert design.returncode == 0, design.stderr
    exp = tmp_path / "scratch" / "ck-sanity-checks" / name
    scaffold = subprocess.run([*CK, "scaffold", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
    assert scaffold.returncode == 0, scaffold.stderr
    return exp


def run_states(exp: Path) -> dict[str, dict]:
    return json.loads((exp / ".ck-run-state.json").read_text())["runs"]


def metrics(tmp_path: Path, name: str, run: str) -> list[dict]:
    path = tmp_path / "scratch" / "ck-outputs" / name / f"ck-out-{run}" / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def job_log(tmp_path: Path, name: str, run: str, job_id: str) -> str:
    return (tmp_path / "scratch" / "ck-outputs" / name / f"ck-out-{run}" / f"slurm-{job_id}.out").read_text()


def assert_each_row_once(events: list[dict], steps: int = 4) -> None:
    """One train row per step, validation at steps 2 and 4 (final), each once: rank 0 alone writes."""
    train = [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in train] == list(range(1, steps + 1))
    assert [(e["step"], e["final"]) for e in val] == [(2, False), (4, True)]
    assert all(e["val_examples"] > 0 and 0 <= e["val_answer_acc"] <= 1 for e in val)
    assert [e["event"] for e in events].count("end") == 1


def ranks_in(log: str) -> list[tuple[str, str]]:
    """(rank, host) of every `lora_finetune_distributed_val: rank R of W on HOST` line. Searched anywhere in the
    log: the processes share one output file, so a line can start after another process's unfinished one
    (a progress bar's carriage returns, a warning)."""
    return sorted(re.findall(r"lora_finetune_distributed_val: rank (\d+) of \d+ on (\S+)", log))


@pytest.mark.training
def test_two_processes_on_one_node_through_ck_run_locally(tmp_path):
    env = ck_env(tmp_path)
    exp = design_and_scaffold(tmp_path, env, "local2", "--procs-per-node", "2", *SMALL)
    setup = (exp / "parity_run" / "setup_finetune.yaml").read_text()
    assert f"custom_recipe: {DISTRIBUTED_RECIPE}" in setup and "procs_per_node: 2" in setup
    proc = subprocess.run([*CK, "run", str(exp), "--executor", "local", "--poll", "0.5"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = run_states(exp)
    assert {run: s["state"] for run, s in states.items()} == {"parity_run": "COMPLETED",
                                                              "probabilistic_run": "COMPLETED"}
    for run, state in states.items():
        assert_each_row_once(metrics(tmp_path, "local2", run))
        log = job_log(tmp_path, "local2", run, state["job_id"])
        assert [r for r, _ in ranks_in(log)] == ["0", "1"], [line for line in log.splitlines() if "rank" in line]


def _rank_one_pids(scratch: Path) -> list[int]:
    """Training processes of rank 1 started for this test (their environment names its scratch)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"RANK=1" in environ and f"CK_SCRATCH={scratch}".encode() in environ:
            pids.append(int(entry.name))
    return pids


@pytest.mark.training
def test_a_killed_rank_fails_the_job_without_a_hang_and_is_reported(tmp_path):
    env = ck_env(tmp_path)
    exp = design_and_scaffold(tmp_path, env, "killed", "--procs-per-node", "2", "--N", "3000", "--val-size", "8",
                              "--epochs", "1", "--batch-size", "1", "--run-val-every-n-steps", "0",
                              "--log-every-n-steps", "1")
    run_output = tmp_path / "ck-run.out"
    with open(run_output, "w") as sink:
        run = subprocess.Popen([*CK, "run", str(exp), "--executor", "local", "--poll", "0.5", "--max-submit", "1"],
                               env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        metrics_file = tmp_path / "scratch" / "ck-outputs" / "killed" / "ck-out-parity_run" / "logs" / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics_file.is_file() and '"train"' in metrics_file.read_text()):
            assert time.monotonic() < deadline and run.poll() is None, "training never logged a step"
            time.sleep(0.5)
        victims = _rank_one_pids(tmp_path / "scratch")
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        states = {}
        while states.get("parity_run", {}).get("state") not in ("FAILED", "COMPLETED"):
            assert time.monotonic() < deadline, f"no end after the kill: {states}"
            time.sleep(0.5)
            states = run_states(exp) if (exp / ".ck-run-state.json").is_file() else {}
    finally:
        end = time.monotonic() + 300
        while run.poll() is None and time.monotonic() < end:  # the second run: end it the same way, at once
            for pid in _rank_one_pids(tmp_path / "scratch"):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        run.wait(timeout=60)
    output = run_output.read_text()
    assert states["parity_run"]["state"] == "FAILED", output[-3000:]
    log = job_log(tmp_path, "killed", "parity_run", states["parity_run"]["job_id"])
    assert "rank       : 1" in log or "rank: 1" in log, log[-3000:]
    assert f"Signal 9 (SIGKILL) received by PID {victims[0]}" in log
    report = output[output.index("parity_run: job"):]
    assert "FAILED" in report and "SIGKILL" in report, output[-3000:]


@pytest.mark.slurm
@pytest.mark.training
def test_two_cpu_processes_under_sbatch_on_the_local_slurm(tmp_path, monkeypatch):
    env = ck_env(tmp_path)
    exp = design_and_scaffold(tmp_path, env, "slurm2", "--procs-per-node", "2", *SMALL)
    assert "--gres" not in (exp / "parity_run" / "finetune.slurm").read_text()
    proc = subprocess.run([*CK, "run", str(exp), "--executor", "slurm", "--poll", "0.5"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run, state in run_states(exp).items():
        assert state["state"] == "COMPLETED" and state["job_id"].isdigit()
        assert_each_row_once(metrics(tmp_path, "slurm2", run))
        log = job_log(tmp_path, "slurm2", run, state["job_id"])
        assert [r for r, _ in ranks_in(log)] == ["0", "1"], [line for line in log.splitlines() if "rank" in line]


@pytest.mark.slurm
@pytest.mark.training
def test_two_nodes_through_ck_run_one_rank_on_each(tmp_path, two_nodes):  # noqa: F811
    env = ck_env(tmp_path, SLURM_CONF=two_nodes["SLURM_CONF"])
    exp = design_and_scaffold(tmp_path, env, "nodes2", "--nodes", "2", *SMALL)
    slurm = (exp / "parity_run" / "finetune.slurm").read_text()
    assert "#SBATCH --nodes=2" in slurm and "--gres" not in slurm
    proc = subprocess.run([*CK, "run", str(exp), "--executor", "slurm", "--poll", "0.5", "--max-submit", "1"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run, state in run_states(exp).items():
        assert state["state"] == "COMPLETED"
        log = job_log(tmp_path, "nodes2", run, state["job_id"])
        assert ranks_in(log) == [("0", "node1"), ("1", "node2")], log[-3000:]
        assert_each_row_once(metrics(tmp_path, "nodes2", run))


@pytest.mark.slow
@pytest.mark.training
@pytest.mark.parametrize("executor", ["local", pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.extended])])
def test_embedded_check_on_two_processes_passes(tmp_path, executor):
    """The embedded preset at its global batch (2 processes x 8 = 16): design, scaffold, run, summarize: PASS.
    One run at a time: two 2-process runs at once are four training processes on a 2-core CI machine (one
    such run's rank was once aborted there, cause not logged; the failure report now shows the first error)."""
    env = ck_env(tmp_path, CK_MAX_LOCAL_JOBS="1")
    exp = design_and_scaffold(tmp_path, env, "pass2", "--procs-per-node", "2", "--batch-size", "8")
    run = subprocess.run([*CK, "run", str(exp), "--executor", executor, "--poll", "1"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summarize = subprocess.run([*CK, "summarize", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=300)
    assert summarize.returncode == 0, summarize.stdout[-3000:] + summarize.stderr[-3000:]
    summary = json.loads((exp / "summary.json").read_text())
    assert {r["name"]: r["verdict"] for r in summary["runs"]} == {"parity_run": "PASS", "probabilistic_run": "PASS"}
    for run_name, state in run_states(exp).items():
        events = metrics(tmp_path, "pass2", run_name)
        val_steps = [e["step"] for e in events if e["event"] == "val"]
        assert val_steps == sorted(set(val_steps))  # each validation row once
        log = job_log(tmp_path, "pass2", run_name, state["job_id"])
        assert [r for r, _ in ranks_in(log)] == ["0", "1"], [line for line in log.splitlines() if "rank" in line]
