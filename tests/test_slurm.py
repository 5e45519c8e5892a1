"""SLURM-only behaviour on the real local SLURM (scripts/slurm-local), and the run-experiment
skill's failure paths followed with the skill's own commands, in the skill's order.

(The TIMEOUT test lives in test_monitor.py, where it overlaps with the other monitor tests.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cruijff_kit import explog
from cruijff_kit.cli import main
from cruijff_kit.executors import SlurmExecutor
from cruijff_kit.monitor import STATE_NAME, run_experiment
from conftest import SLURM_ACCOUNTING, SLURM_DIR, slurm_local
from test_executors import make_run, wait_terminal

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
POLL = 0.5
CK = [sys.executable, "-m", "cruijff_kit"]



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
    design = subprocess.run([*CK, "design", "bit-sequences", "--preset", "embedded", "--yes", "--name", "e2e",
                             "--N", "600", "--val-size", "32", "--max-steps-per-epoch", "12"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert design.returncode == 0, design.stderr
    exp = scratch / "ck-sanity-checks" / "e2e"
    scaffold = subprocess.run([*CK, "scaffold", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
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
    final = run_experiment(exp, executor="slurm", resume=True, poll=POLL, live=False, out=io.StringIO())
    assert final == {"victim": "CANCELLED"}
    assert [e.fields["Current"] for e in explog.read_log(exp, "run") if e.action == "STATE_CHANGE"][-1] == "CANCELLED"


def log_entries(exp: Path, action: str) -> list:
    return [e for e in explog.read_log(exp, "run") if e.action == action]


@pytest.mark.parametrize("again", [[], ["--resume"]], ids=["ck-run", "ck-run-resume"])
def test_skill_path_refused_submission_is_submitted_once_after_the_fix(tmp_path, capsys, again):
    """Skill: SUBMIT_FAILED -> fix the cause -> `ck run EXP_DIR` again (or --resume) submits it, once."""
    exp = tmp_path / "exp"
    make_run(exp, "wants_gpu", "true", gres="gpu:1")
    make_run(exp, "fine", "true")
    command = ["run", str(exp), "--executor", "slurm", "--poll", str(POLL), "--no-live"]
    assert main(command) == 1
    runs = read_state(exp)
    assert runs["wants_gpu"]["state"] == "SUBMIT_FAILED" and runs["wants_gpu"]["job_id"] is None
    assert "Invalid generic resource" in runs["wants_gpu"]["message"]
    assert runs["fine"]["state"] == "COMPLETED"
    failed = log_entries(exp, "SUBMIT_FAILED")
    assert len(failed) == 1 and "Invalid generic resource" in failed[0].fields["Result"]
    assert "Invalid generic resource" in capsys.readouterr().out
    incomplete = log_entries(exp, "SUBMIT_INCOMPLETE")  # the log counts what was submitted
    assert len(incomplete) == 1 and incomplete[0].description.startswith("1 of 2 run(s) have a job")
    assert not log_entries(exp, "ALL_SUBMITTED")

    fine_job = runs["fine"]["job_id"]
    make_run(exp, "wants_gpu", "true")  # the fix: no GPU asked for
    assert main(["run", str(exp), *again, "--executor", "slurm", "--poll", str(POLL), "--no-live"]) == 0
    runs = read_state(exp)
    assert runs["wants_gpu"]["state"] == "COMPLETED" and runs["fine"]["job_id"] == fine_job
    submitted = [e.description for e in log_entries(exp, "SUBMIT_JOB")]
    assert submitted == ["submitted fine", "submitted wants_gpu"]  # each exactly once
    assert len(log_entries(exp, "ALL_SUBMITTED")) == 1
    assert main(command) == 0  # nothing left without a job: a further `ck run` submits nothing
    assert len(log_entries(exp, "SUBMIT_JOB")) == 2


def _stop_slurmctld() -> None:
    pid = int((SLURM_DIR / "run" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "slurmctld did not stop"
        time.sleep(0.2)


def test_skill_path_scheduler_unreachable_then_started(tmp_path):
    """Skill: `ck run --executor slurm` says the controller does not answer -> `scripts/slurm-local
    start` -> `ck run` again submits every run, and the run log tells the truth."""
    exp = tmp_path / "exp"
    make_run(exp, "a", "sleep 1")
    make_run(exp, "b", "echo b")
    command = [*CK, "run", str(exp), "--executor", "slurm", "--poll", str(POLL), "--no-live"]
    _stop_slurmctld()
    try:
        refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        start = slurm_local("start", timeout=120)
    assert refused.returncode == 2, refused.stderr
    err = refused.stderr.strip()
    assert "\n" not in err and "controller does not answer" in err and "scripts/slurm-local start" in err
    assert "Traceback" not in refused.stdout + refused.stderr
    assert not (exp / STATE_NAME).exists() and not (exp / "run-experiment.log").exists()  # nothing recorded
    assert start.returncode == 0, start.stderr

    ran = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert {n: r["state"] for n, r in read_state(exp).items()} == {"a": "COMPLETED", "b": "COMPLETED"}
    assert len(log_entries(exp, "SUBMIT_JOB")) == 2
    [all_submitted] = log_entries(exp, "ALL_SUBMITTED")
    assert all_submitted.description.startswith("all 2 run(s) have a job (2 submitted")
    [complete] = log_entries(exp, "ALL_COMPLETE")
    assert complete.fields["Command"] == " ".join(["ck", *command[3:]])  # as run, flags included
    assert complete.fields["Result"] == "COMPLETED=2"

    log_before = (exp / "run-experiment.log").read_text()
    assert subprocess.run(command, capture_output=True, text=True, timeout=60).returncode == 0
    assert (exp / "run-experiment.log").read_text() == log_before  # a no-op `ck run` logs nothing


def test_skill_path_failed_run_is_rerun_by_command(tmp_path, capsys):
    """Skill: a run FAILED -> read its log tail, fix the cause -> `ck run EXP_DIR --rerun RUN`."""
    exp = tmp_path / "exp"
    fixed = tmp_path / "fixed"
    make_run(exp, "flaky", f"test -f {fixed} || {{ echo 'Traceback: FileNotFoundError: {fixed}'; exit 3; }}\necho fine")
    make_run(exp, "steady", "true")
    command = ["run", str(exp), "--executor", "slurm", "--poll", str(POLL), "--no-live"]
    assert main(command) == 1
    first = read_state(exp)
    assert (first["flaky"]["state"], first["flaky"]["exit_code"]) == ("FAILED", 3)
    assert "Traceback: FileNotFoundError" in capsys.readouterr().out  # the log tail the skill says to read

    fixed.touch()
    assert main(command) == 1  # a run whose job ended is not resubmitted without being asked
    assert read_state(exp)["flaky"]["job_id"] == first["flaky"]["job_id"]
    assert main(["run", str(exp), "--rerun", "nope", "--executor", "slurm"]) == 2
    assert "steady" in capsys.readouterr().err  # names the runs there are

    assert main([*command, "--rerun", "flaky"]) == 0
    runs = read_state(exp)
    assert runs["flaky"]["state"] == "COMPLETED" and runs["flaky"]["job_id"] != first["flaky"]["job_id"]
    assert runs["flaky"]["attempts"] == [{"job_id": first["flaky"]["job_id"], "state": "FAILED", "exit_code": 3}]
    assert runs["steady"]["job_id"] == first["steady"]["job_id"]
    [rerun] = log_entries(exp, "RERUN")
    assert rerun.fields["Job ID"] == first["flaky"]["job_id"] and "--rerun flaky" in rerun.fields["Command"]
    assert len(log_entries(exp, "SUBMIT_JOB")) == 3 and len(log_entries(exp, "ALL_COMPLETE")) == 2


def test_skill_path_detached_monitor_status_then_resume(tmp_path, capsys):
    """Skill: `ck run EXP_DIR --detach` -> `ck status EXP_DIR --json` (reads only) -> `ck run --resume EXP_DIR`."""
    exp = tmp_path / "exp"
    make_run(exp, "a", "sleep 2")
    make_run(exp, "b", "sleep 1")
    assert main(["run", str(exp), "--executor", "slurm", "--detach"]) == 0
    capsys.readouterr()
    state_before = (exp / STATE_NAME).read_bytes()
    deadline = time.monotonic() + 60
    while True:
        assert main(["status", str(exp), "--json"]) == 0
        rows = {r["run"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
        if all(r["state"] == "COMPLETED" for r in rows.values()):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(POLL)
    assert (exp / STATE_NAME).read_bytes() == state_before  # `ck status` changed nothing
    assert rows["a"]["elapsed"] not in ("-", "0:00:00")  # the scheduler's own start and end times
    assert main(["run", "--resume", str(exp), "--poll", str(POLL), "--no-live"]) == 0
    assert len(log_entries(exp, "ALL_COMPLETE")) == 1 and len(log_entries(exp, "SUBMIT_JOB")) == 2
    assert "| a |" in (exp / "experiment_summary.md").read_text()
    assert " 0:00:00 " not in (exp / "experiment_summary.md").read_text()


def test_sacct_completion_file_answers_for_jobs_the_controller_forgot(tmp_path):
    executor = SlurmExecutor()
    job_id = executor.submit(make_run(tmp_path / "exp", "bye", "sleep 1\nexit 4")).id
    assert wait_terminal(executor, [job_id])[job_id].state == "FAILED"
    # squeue keeps a job for MinJobAge; after that only sacct knows it. Ask sacct directly (slurmdbd
    # records a job's end a moment after the controller does):
    deadline = time.monotonic() + 60
    while (info := executor._sacct([job_id]).get(job_id)) is None or info.state != "FAILED":
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
    assert (info.state, info.exit_code) == ("FAILED", 4)
    assert info.ended_at - info.started_at >= 1  # the completion file has the start and end times
    # plain sacct from the database when there is one, else `sacct -c` (the job-completion file)
    assert executor.sacct_mode() == ("db" if SLURM_ACCOUNTING else "jobcomp")


def test_slurm_local_start_is_idempotent():
    def daemons() -> dict[str, str]:
        status = slurm_local("status", timeout=60)
        assert status.returncode == 0 and "debug" in status.stdout, status.stdout + status.stderr
        return dict(re.findall(r"^(\w+): running \(pid (\d+)\)", status.stdout, flags=re.M))

    before = daemons()
    start = slurm_local("start", timeout=120)
    assert start.returncode == 0, start.stderr
    after = daemons()
    assert {"munged", "slurmctld", "slurmd"} <= after.keys()
    assert after == before  # nothing restarted


def test_failing_squeue_keeps_states_and_the_monitor_alive(tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "steady", "sleep 2")
    assert main(["run", str(exp), "--executor", "slurm", "--detach", "--poll", str(POLL)]) == 0
    # this monitor's squeue cannot work (an empty slurm.conf fails at once; a wrong port would take 9 s)
    (tmp_path / "empty.conf").write_text("")
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "empty.conf")}
    blind = subprocess.Popen([*CK, "run", "--resume", str(exp), "--executor", "slurm",
                              "--poll", "0.2", "--lost-after", "0.5", "--no-live"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    assert blind.poll() is None  # neither crashed nor gave up
    blind.kill()
    output = blind.communicate()[0]
    assert "unreachable, states kept as last seen; retrying every poll" in output
    assert read_state(exp)["steady"]["state"] in ("PENDING", "RUNNING")  # not LOST: no answer is not "unknown"
    assert run_experiment(exp, executor="slurm", resume=True, poll=POLL, live=False, out=io.StringIO()) == {"steady": "COMPLETED"}
    assert "POLL_FAILED" in [e.action for e in explog.read_log(exp, "run")]


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.training
def test_requeued_training_resumes_from_its_epoch_checkpoint_and_a_finished_one_does_not_train_again(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    env = {**os.environ, "CK_SCRATCH": str(scratch), "CK_CONFIG": str(tmp_path / "settings.yaml"),
           "CK_DATA_DIR": str(tmp_path / "data"), "WANDB_MODE": "offline"}
    for key in ("CK_SCRATCH", "CK_CONFIG", "CK_DATA_DIR", "WANDB_MODE"):
        monkeypatch.setenv(key, env[key])  # sbatch exports the submitting environment to the job
    design = subprocess.run([*CK, "design", "bit-sequences", "--preset", "embedded", "--yes", "--name", "rq",
                             "--N", "800", "--val-size", "32", "--epochs", "2", "--max-steps-per-epoch", "30"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert design.returncode == 0, design.stderr
    exp = scratch / "ck-sanity-checks" / "rq"
    scaffold = subprocess.run([*CK, "scaffold", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert scaffold.returncode == 0, scaffold.stderr
    script = (exp / "parity_run" / "finetune.slurm").read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@60" in script

    run_experiment(exp, executor="slurm", detach=True, poll=POLL, live=False, out=io.StringIO())
    job_id = read_state(exp)["parity_run"]["job_id"]
    out_dir = scratch / "ck-outputs" / "rq" / "ck-out-parity_run"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not any(e["event"] == "train" and e["epoch"] == 1 for e in
                                                  (_metrics(out_dir) if (out_dir / "logs" / "metrics.jsonl").exists() else [])):
        time.sleep(0.1)
    assert not (out_dir / "epoch_1").exists(), "epoch 1 finished before the requeue: make the epoch longer"
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
    assert requeue.returncode == 0, requeue.stderr
    interrupted = _metrics(out_dir)

    out = io.StringIO()
    final = run_experiment(exp, executor="slurm", resume=True, poll=POLL, live=False, out=out)
    assert final == {"parity_run": "COMPLETED", "probabilistic_run": "COMPLETED"}, out.getvalue()[-3000:]
    assert read_state(exp)["parity_run"]["job_id"] == job_id  # SLURM requeued the same job: no resubmission
    log = (out_dir / f"slurm-{job_id}.out").read_text()
    assert "epoch checkpoints found: resume" in log and log.index("tune run exited") > log.index("found: resume")
    metrics = _metrics(out_dir)
    steps = [e["step"] for e in metrics if e["event"] == "train"]
    assert steps == sorted(set(steps)), "a step is in metrics.jsonl twice"
    assert [e for e in metrics if e["epoch"] == 0] == [e for e in interrupted if e["epoch"] == 0]
    assert metrics[-1]["event"] == "end" and metrics[-1]["steps"] == 60
    actions = [e.action for e in explog.read_log(exp, "run")]
    assert not [a for a in actions if a.startswith("JOB_") or a.startswith("RETRY")]

    # requeued after its last epoch: SLURM starts it again once its credential lifetime has passed (slurm.conf
    # AuthInfo cred_expire, 20 s on the local SLURM; forcing an earlier start gets the launch refused with "Job
    # credential revoked"); the script sees the finished training and stops without training again
    before = (out_dir / "logs" / "metrics.jsonl").read_text()
    again = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    deadline = time.monotonic() + 240
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %r"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
        if state.startswith("COMPLETED") and "not training again" in (out_dir / f"slurm-{job_id}.out").read_text():
            break
        time.sleep(0.5)
    log = (out_dir / f"slurm-{job_id}.out").read_text()
    assert state.startswith("COMPLETED") and "not training again" in log, (state, log[-2000:])
    assert "credential revoked" not in log.lower()
    assert (out_dir / "logs" / "metrics.jsonl").read_text() == before
