"""SLURM-only behaviour on the real local SLURM (scripts/slurm-local).

(The TIMEOUT test lives in test_monitor.py, where it overlaps with the other monitor tests.)
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from cruijff_kit import explog
from cruijff_kit.cli import main
from cruijff_kit.executors import SlurmExecutor
from cruijff_kit.monitor import STATE_NAME, run_experiment
from test_executors import make_run, wait_terminal

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
POLL = 0.5



def read_state(exp_dir: Path) -> dict:
    return json.loads((exp_dir / STATE_NAME).read_text())["runs"]


@pytest.mark.training
def test_scaffolded_embedded_run_completes_under_sbatch_with_metrics(tmp_path, monkeypatch):
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    env = {**os.environ, "CK_SCRATCH": str(scratch), "CK_CONFIG": str(tmp_path / "settings.yaml"),
           "CK_DATA_DIR": str(data), "WANDB_MODE": "offline"}
    env.pop("CK_MODELS_DIR", None)
    for key in ("CK_SCRATCH", "CK_CONFIG", "CK_DATA_DIR", "WANDB_MODE"):
        monkeypatch.setenv(key, env[key])  # sbatch exports the submitting environment to the job
    ck = str(REPO / ".venv" / "bin" / "ck")
    design = subprocess.run([ck, "design", "bit-sequences", "--preset", "embedded", "--yes", "--name", "e2e",
                             "--N", "600", "--val-size", "32", "--max-steps-per-epoch", "12"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert design.returncode == 0, design.stderr
    exp = scratch / "ck-sanity-checks" / "e2e"
    scaffold = subprocess.run([ck, "scaffold", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert scaffold.returncode == 0, scaffold.stderr
    assert "--gres" not in (exp / "parity_run" / "finetune.slurm").read_text()

    out = io.StringIO()
    final = run_experiment(exp, executor="slurm", poll=POLL, live=True, out=out)
    assert final == {"parity_run": "COMPLETED", "probabilistic_run": "COMPLETED"}, out.getvalue()[-3000:]
    for run, fields in read_state(exp).items():
        assert fields["job_id"].isdigit() and fields["exit_code"] == 0
        out_dir = scratch / "ck-outputs" / "e2e" / f"ck-out-{run}"
        assert (out_dir / f"slurm-{fields['job_id']}.out").is_file()
        events = [json.loads(line) for line in (out_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
        assert [e for e in events if e["event"] == "train"] and events[-1]["event"] == "end"
    assert "COMPLETED" in out.getvalue()


def test_scancel_is_reported_cancelled(tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "victim", "sleep 300")
    assert main(["run", str(exp), "--executor", "slurm", "--detach", "--poll", str(POLL)]) == 0
    job_id = read_state(exp)["victim"]["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    t0 = time.monotonic()
    final = run_experiment(exp, executor="slurm", resume=True, poll=POLL, live=False, out=io.StringIO())
    assert final == {"victim": "CANCELLED"}
    assert time.monotonic() - t0 < 2 * POLL + 5
    assert [e.fields["Current"] for e in explog.read_log(exp, "run") if e.action == "STATE_CHANGE"][-1] == "CANCELLED"


def test_sbatch_refusal_is_submit_failed_with_its_message(tmp_path, capsys):
    exp = tmp_path / "exp"
    make_run(exp, "wants_gpu", "true", gres="gpu:1")
    make_run(exp, "fine", "true")
    assert main(["run", str(exp), "--executor", "slurm", "--poll", str(POLL), "--no-live"]) == 1
    runs = read_state(exp)
    assert runs["wants_gpu"]["state"] == "SUBMIT_FAILED" and runs["wants_gpu"]["job_id"] is None
    assert "Invalid generic resource" in runs["wants_gpu"]["message"]
    assert runs["fine"]["state"] == "COMPLETED"
    failed = [e for e in explog.read_log(exp, "run") if e.action == "SUBMIT_FAILED"]
    assert len(failed) == 1 and "Invalid generic resource" in failed[0].fields["Result"]
    assert "Invalid generic resource" in capsys.readouterr().out


def test_sacct_completion_file_answers_for_jobs_the_controller_forgot(tmp_path):
    executor = SlurmExecutor()
    job_id = executor.submit(make_run(tmp_path / "exp", "bye", "sleep 1\nexit 4")).id
    assert wait_terminal(executor, [job_id])[job_id].state == "FAILED"
    # squeue keeps a job for MinJobAge; after that only sacct knows it. Ask sacct directly:
    info = executor._sacct([job_id])[job_id]
    assert (info.state, info.exit_code) == ("FAILED", 4)
    assert info.ended_at - info.started_at >= 1  # the completion file has the start and end times
    assert executor._sacct_mode == "jobcomp"  # no accounting database: `sacct -c`


def test_slurm_local_start_is_idempotent():
    t0 = time.monotonic()
    start = subprocess.run([str(REPO / "scripts" / "slurm-local"), "start"], capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    assert time.monotonic() - t0 < 10
    status = subprocess.run([str(REPO / "scripts" / "slurm-local"), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "slurmd: running" in status.stdout and "debug" in status.stdout


def test_failing_squeue_keeps_states_and_the_monitor_alive(tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "steady", "sleep 2")
    assert main(["run", str(exp), "--executor", "slurm", "--detach", "--poll", str(POLL)]) == 0
    # this monitor's squeue cannot work (an empty slurm.conf fails at once; a wrong port would take 9 s)
    (tmp_path / "empty.conf").write_text("")
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "empty.conf")}
    blind = subprocess.Popen([str(REPO / ".venv" / "bin" / "ck"), "run", "--resume", str(exp), "--executor", "slurm",
                              "--poll", "0.2", "--lost-after", "0.5", "--no-live"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    assert blind.poll() is None  # neither crashed nor gave up
    blind.kill()
    output = blind.communicate()[0]
    assert "poll failed, retrying" in output
    assert read_state(exp)["steady"]["state"] in ("PENDING", "RUNNING")  # not LOST: no answer is not "unknown"
    assert run_experiment(exp, executor="slurm", resume=True, poll=POLL, live=False, out=io.StringIO()) == {"steady": "COMPLETED"}
    assert "POLL_FAILED" in [e.action for e in explog.read_log(exp, "run")]
