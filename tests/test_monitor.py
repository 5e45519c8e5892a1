"""The monitor (`ck run` / `ck status`) end to end on both executors, with hand-written runs.

SLURM enforces a 1-minute time limit 60-90 s after the job starts, so the TIMEOUT job is submitted
by the first test of this file and collected by the last: the other tests run while it waits.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cruijff_kit import explog
from cruijff_kit.cli import main
from cruijff_kit.markdown_sections import get_section
from cruijff_kit.executors import LocalExecutor, SlurmExecutor
from cruijff_kit.monitor import LOCAL_STATE_DIR, STATE_NAME, last_train_metrics, run_experiment
from test_executors import EXECUTORS, make_run

POLL = 0.5



def actions(exp_dir: Path) -> list[str]:
    return [e.action for e in explog.read_log(exp_dir, "run")]


def read_state(exp_dir: Path) -> dict:
    return json.loads((exp_dir / STATE_NAME).read_text())["runs"]


def metrics_body(out_dir: Path) -> str:
    """Writes two train lines and a half-written third one, like a recipe killed mid-write."""
    logs = out_dir / "logs"
    return (f"mkdir -p {logs}\n"
            f"""printf '%s\\n' '{{"event": "train", "step": 1, "loss": 0.9}}' '{{"event": "val", "step": 2, "val_loss": 0.8}}' """
            f"""'{{"event": "train", "step": 2, "loss": 0.75}}' > {logs}/metrics.jsonl\n"""
            f"""printf '{{"event": "train", "st' >> {logs}/metrics.jsonl\n""")


@pytest.fixture(scope="module")
def overtime_experiment(tmp_path_factory, slurm_cluster):
    exp = tmp_path_factory.mktemp("timeout") / "exp"
    make_run(exp, "overtime", "echo started\nsleep 600", time_limit="1")
    states = run_experiment(exp, executor="slurm", detach=True, poll=POLL, live=False, out=io.StringIO())
    assert states["overtime"] in ("PENDING", "RUNNING")
    return exp


@pytest.mark.slurm
def test_slurm_time_limit_job_is_submitted_first(overtime_experiment):
    assert read_state(overtime_experiment)["overtime"]["job_id"].isdigit()



@pytest.mark.parametrize("kind", EXECUTORS)
def test_run_experiment_records_jobs_logs_and_failures(kind, tmp_path):
    exp = tmp_path / "exp"
    outputs = tmp_path / "outputs"
    make_run(exp, "ok", metrics_body(outputs / "ck-out-ok") + f"sleep 1\ndate +%s.%N > {tmp_path}/ok_end")
    make_run(exp, "bad", "echo 'Traceback: something broke'\nexit 3")
    out = io.StringIO()
    final = run_experiment(exp, executor=kind, poll=POLL, out=out, max_local_jobs=2)
    assert final == {"bad": "FAILED", "ok": "COMPLETED"}

    runs = read_state(exp)
    assert runs["bad"]["exit_code"] == 3 and runs["ok"]["exit_code"] == 0
    # reported within two polls of the job's last line (plus the scheduler's own wind-down)
    assert runs["ok"]["ended_at"] - float((tmp_path / "ok_end").read_text()) < 2 * POLL + 1.0

    text = out.getvalue()
    assert "exit code 3" in text and "Traceback: something broke" in text  # failure shows its log tail
    assert "2     0.7500" in text  # latest complete train line, half-written one ignored

    log = explog.read_log(exp, "run")
    submits = [e for e in log if e.action == "SUBMIT_JOB"]
    assert sorted(e.fields["Job ID"] for e in submits) == sorted([runs["ok"]["job_id"], runs["bad"]["job_id"]])
    changes = [e for e in log if e.action == "STATE_CHANGE" and e.fields["Job ID"] == runs["bad"]["job_id"]]
    assert changes[-1].fields["Current"] == "FAILED" and changes[0].fields["Previous"] == "PENDING"
    names = [e.action for e in log]
    assert names.index("ALL_SUBMITTED") < names.index("ALL_COMPLETE") and "JOB_FAILED" in names

    jobs = get_section((exp / "experiment_summary.md").read_text(), "Jobs")
    assert f"| bad | {runs['bad']['job_id']} | FAILED | 3 |" in jobs
    assert f"| ok | {runs['ok']['job_id']} | COMPLETED | 0 |" in jobs

    assert main(["status", str(exp), "--json"]) == 1  # a run failed
    # nothing left to submit: a second `ck run` resubmits nothing
    assert main(["run", str(exp), "--executor", kind, "--poll", "0.2", "--no-live"]) == 1
    assert actions(exp).count("SUBMIT_JOB") == 2


def test_a_failure_shows_the_cause_buried_above_the_logs_tail(tmp_path):
    """torchrun ends a failed job's log with its summary of the processes; the rank's own error line, which
    says why, sits further up. The failure report and the run log show it."""
    exp = tmp_path / "exp"
    cause = "terminate called after throwing an instance of 'gloo::IoException'"
    summary = "\n".join(f"echo 'summary line {i}'" for i in range(30))
    make_run(exp, "crash", f"echo 'step 1 loss 0.5'\necho \"{cause}\"\necho 'Aborted (core dumped)'\n{summary}\nexit 1")
    out = io.StringIO()
    assert run_experiment(exp, executor="local", poll=POLL, out=out) == {"crash": "FAILED"}
    report = out.getvalue().split("first error lines of", 1)[1].split("last lines of", 1)
    assert cause in report[0] and "Aborted (core dumped)" in report[0] and "step 1 loss" not in report[0]
    assert "summary line 29" in report[1] and cause not in report[1]
    failed = [e for e in explog.read_log(exp, "run") if e.action == "JOB_FAILED"]
    assert cause in failed[0].fields["Explanation"]


@pytest.mark.parametrize("kind", EXECUTORS)
def test_killed_monitor_is_resumed_without_resubmitting(kind, tmp_path):
    exp = tmp_path / "exp"
    for i in range(3):
        make_run(exp, f"r{i}", f"sleep 1.5\necho done {i}")
    # local: all three submitted, two wait in the executor's persisted queue;
    # slurm: --max-submit 1 keeps two runs unsubmitted in the monitor.
    cap = [] if kind == "local" else ["--max-submit", "1"]
    env = {**os.environ, "CK_MAX_LOCAL_JOBS": "1"}
    monitor = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "run", str(exp), "--executor", kind,
                                "--poll", str(POLL), *cap], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not ((exp / STATE_NAME).exists() and any(r["job_id"] for r in read_state(exp).values())):
        assert time.monotonic() < deadline and monitor.poll() is None
        time.sleep(0.05)
    monitor.kill()
    monitor.wait()
    before = {name: r["job_id"] for name, r in read_state(exp).items() if r["job_id"]}
    assert before

    final = run_experiment(exp, executor=kind, resume=True, poll=POLL, live=False, max_local_jobs=1,
                           max_submit=None if kind == "local" else 1, out=io.StringIO())
    assert final == {"r0": "COMPLETED", "r1": "COMPLETED", "r2": "COMPLETED"}
    after = read_state(exp)
    assert all(after[name]["job_id"] == job_id for name, job_id in before.items())  # no state lost
    # nothing submitted twice: three distinct jobs, every logged submission is one of them, none logged twice
    # (the kill may land between recording a job id and logging its SUBMIT_JOB line)
    final_ids = {run["job_id"] for run in after.values()}
    submitted = [e.fields["Job ID"] for e in explog.read_log(exp, "run") if e.action == "SUBMIT_JOB"]
    assert len(final_ids) == 3 and len(submitted) == len(set(submitted)) and set(submitted) <= final_ids
    assert "RESUME" in actions(exp)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_submission_interrupted_before_its_job_id_was_recorded_is_not_repeated(kind, tmp_path):
    exp = tmp_path / "exp"
    for name in ("a", "b"):
        make_run(exp, name, f"echo ran >> {tmp_path}/{name}_runs")
    executor = LocalExecutor(exp / LOCAL_STATE_DIR) if kind == "local" else SlurmExecutor()
    t0 = time.time()
    job_a = executor.submit(exp / "a").id  # submitted, then the monitor was killed before recording it;
    (exp / STATE_NAME).write_text(json.dumps({"version": 1, "executor": kind, "runs": {  # b: killed before sbatch
        "a": {"submit_intent": t0}, "b": {"submit_intent": t0}}}))
    final = run_experiment(exp, executor=kind, poll=0.2, live=False, out=io.StringIO())
    assert final == {"a": "COMPLETED", "b": "COMPLETED"}
    runs = read_state(exp)
    assert runs["a"]["job_id"] == job_a and runs["b"]["job_id"] not in (None, job_a)
    assert all(r["submit_intent"] is None for r in runs.values())
    assert (tmp_path / "a_runs").read_text() == (tmp_path / "b_runs").read_text() == "ran\n"  # each ran once


def test_submission_intent_is_saved_before_the_scheduler_is_asked(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    make_run(exp, "a", "true")
    executor = LocalExecutor(exp / LOCAL_STATE_DIR)
    seen = []
    real_submit = executor.submit
    monkeypatch.setattr(executor, "submit", lambda run_dir, run=None: seen.append(read_state(exp)["a"]) or real_submit(run_dir, run))
    assert run_experiment(exp, executor=executor, poll=0.2, live=False, out=io.StringIO()) == {"a": "COMPLETED"}
    assert seen[0]["submit_intent"] is not None and seen[0]["job_id"] is None
    assert read_state(exp)["a"]["submit_intent"] is None


@pytest.mark.parametrize("kind", EXECUTORS)
def test_unknown_job_id_becomes_lost_after_the_grace_period(kind, tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "ghost", "true")
    bogus = "local-777" if kind == "local" else "99999998"
    (exp / STATE_NAME).write_text(json.dumps({"version": 1, "executor": kind, "runs": {
        "ghost": {"job_id": bogus, "state": "RUNNING", "submitted_at": time.time()}}}))
    t0 = time.monotonic()
    final = run_experiment(exp, executor=kind, resume=True, poll=0.2, lost_after=1.0, live=False, out=io.StringIO())
    assert final == {"ghost": "LOST"}
    assert time.monotonic() - t0 >= 1.0  # not declared lost before its grace period
    assert "JOB_LOST" in actions(exp) and "SUBMIT_JOB" not in actions(exp)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_max_submit_keeps_at_most_n_jobs_live(kind, tmp_path):
    exp = tmp_path / "exp"
    for i in range(3):
        make_run(exp, f"r{i}", f"date +%s.%N > {tmp_path}/start{i}\nsleep 0.5\ndate +%s.%N > {tmp_path}/end{i}")
    final = run_experiment(exp, executor=kind, max_submit=1, poll=0.2, live=False, max_local_jobs=3, out=io.StringIO())
    assert set(final.values()) == {"COMPLETED"}
    spans = sorted((float((tmp_path / f"start{i}").read_text()), float((tmp_path / f"end{i}").read_text())) for i in range(3))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end


OOM_BODY = """
bs=$(python3 -c "import yaml; print(yaml.safe_load(open('finetune.yaml'))['batch_size'])")
echo "batch_size=$bs"
if [ "$bs" -gt 4 ]; then
  echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB' >&2
  exit 1
fi
"""


@pytest.mark.parametrize("kind", EXECUTORS)
def test_cuda_oom_is_reported_and_retried_at_half_batch_size(kind, tmp_path):
    exp, single = tmp_path / "exp", tmp_path / "single"
    for where, name in ((exp, "retried"), (single, "not_retried")):
        run_dir = make_run(where, name, OOM_BODY.replace("python3", sys.executable), out_root=tmp_path / "outputs")
        (run_dir / "finetune.yaml").write_text("# rendered\nbatch_size: 16\nepochs: 1\n")
        (run_dir / "setup_finetune.yaml").write_text("batch_size: 16\n")
    out = io.StringIO()
    assert run_experiment(single, executor=kind, poll=POLL, live=False, out=io.StringIO()) == {"not_retried": "OOM"}
    # 16 -> 8 -> 4: two retries
    assert run_experiment(exp, executor=kind, poll=POLL, live=False, retry_oom=2, out=out) == {"retried": "COMPLETED"}
    assert yaml.safe_load((exp / "retried" / "finetune.yaml").read_text())["batch_size"] == 4
    assert yaml.safe_load((exp / "retried" / "setup_finetune.yaml").read_text())["batch_size"] == 4
    log = explog.read_log(exp, "run")
    assert [e.action for e in log].count("RETRY_OOM") == 2 and [e.action for e in log].count("JOB_OOM") == 2
    assert len(read_state(exp)["retried"]["attempts"]) == 2
    assert "CUDA out of memory" in out.getvalue()


@pytest.mark.parametrize("kind", EXECUTORS)
def test_skill_path_oom_then_retry_oom_command(kind, tmp_path, capsys):
    """Skill: a run ends OOM -> `ck run EXP_DIR --retry-oom 1` resubmits it at half the batch size."""
    exp = tmp_path / "exp"
    run_dir = make_run(exp, "big", OOM_BODY.replace("python3", sys.executable).replace("-gt 4", "-gt 8"))
    (run_dir / "finetune.yaml").write_text("batch_size: 16\n")
    command = ["run", str(exp), "--executor", kind, "--poll", str(POLL), "--no-live"]
    assert main(command) == 1
    assert read_state(exp)["big"]["state"] == "OOM"
    assert "CUDA out of memory" in capsys.readouterr().out
    assert main([*command, "--retry-oom", "1"]) == 0
    run = read_state(exp)["big"]
    assert run["state"] == "COMPLETED" and run["oom_retries"] == 1 and run["attempts"][0]["state"] == "OOM"
    assert yaml.safe_load((run_dir / "finetune.yaml").read_text())["batch_size"] == 8
    assert actions(exp).count("RETRY_OOM") == 1 and actions(exp).count("ALL_COMPLETE") == 2


def test_status_reports_a_cuda_oom_like_the_monitor(tmp_path, capsys):
    exp = tmp_path / "exp"
    run_dir = make_run(exp, "big", OOM_BODY.replace("python3", sys.executable))
    (run_dir / "finetune.yaml").write_text("batch_size: 16\n")
    assert main(["run", str(exp), "--executor", "local", "--detach", "--poll", "0.2"]) == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        capsys.readouterr()
        main(["status", str(exp), "--json"])
        state = json.loads(capsys.readouterr().out)["runs"][0]["state"]
        if state not in ("PENDING", "RUNNING"):
            break
        time.sleep(0.2)
    assert state == "OOM"


def test_detach_then_status_then_resume(tmp_path, capsys, monkeypatch):
    exp = tmp_path / "exp"
    make_run(exp, "a", "sleep 1")
    assert main(["run", str(exp), "--executor", "local", "--detach", "--poll", "0.2"]) == 0
    assert "ck run --resume" in capsys.readouterr().out
    assert main(["status", str(exp), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["runs"][0]["state"] in ("PENDING", "RUNNING") and status["runs"][0]["job_id"] == "local-1"
    monkeypatch.setenv("CK_EXECUTOR", "slurm")  # the executor recorded with the jobs wins over the setting
    assert main(["run", "--resume", str(exp), "--poll", "0.2", "--no-live"]) == 0
    assert actions(exp).count("SUBMIT_JOB") == 1 and {"DETACH", "RESUME", "ALL_COMPLETE"} <= set(actions(exp))


def test_detached_local_experiment_runs_to_the_end_with_nobody_polling(tmp_path, capsys):
    exp = tmp_path / "exp"
    for i in range(3):
        make_run(exp, f"r{i}", f"sleep 0.5\ntouch {tmp_path}/done{i}")
    env_cap = {"CK_MAX_LOCAL_JOBS": "1"}  # more runs than local slots: two wait in the queue
    detach = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(exp), "--executor", "local", "--detach"],
                            env={**os.environ, **env_cap}, capture_output=True, text=True, timeout=60)
    assert detach.returncode == 0, detach.stderr
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"done{i}").exists() for i in range(3)):  # nobody runs ck status or ck run
        assert time.monotonic() < deadline, "queued local jobs did not start on their own"
        time.sleep(0.2)
    recorded = {p: p.read_bytes() for p in [exp / STATE_NAME, exp / "run-experiment.log", exp / "experiment_summary.md"]}
    deadline = time.monotonic() + 30
    while True:
        assert main(["status", str(exp), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["runs"]
        if all(r["state"] == "COMPLETED" for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 3
    assert all(r["elapsed"] not in ("-",) for r in rows)
    assert {p: p.read_bytes() for p in recorded} == recorded  # `ck status` wrote nothing
    assert main(["run", "--resume", str(exp), "--poll", "0.2", "--no-live"]) == 0
    assert actions(exp).count("ALL_COMPLETE") == 1 and actions(exp).count("SUBMIT_JOB") == 3


def test_elapsed_of_a_job_that_ran_between_two_polls_is_its_run_time(tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "quick", "sleep 1.5")
    assert run_experiment(exp, executor="local", poll=4, live=False, out=io.StringIO()) == {"quick": "COMPLETED"}
    jobs = get_section((exp / "experiment_summary.md").read_text(), "Jobs")
    h, m, sec = map(int, re.search(r"\| quick \| local-1 \| COMPLETED \| 0 \| (\d+):(\d\d):(\d\d) \|", jobs).groups())
    assert 1 <= 3600 * h + 60 * m + sec < 4  # the job's own start and end, not when the monitor looked (poll 4 s)


def test_rerun_refuses_a_live_job_and_an_unknown_run_and_records_nothing(tmp_path, capsys):
    exp = tmp_path / "exp"
    make_run(exp, "slow", f"test -f {tmp_path}/quick || sleep 30")
    assert main(["run", str(exp), "--executor", "local", "--detach"]) == 0
    before = (exp / STATE_NAME).read_bytes(), (exp / "run-experiment.log").read_bytes()
    capsys.readouterr()
    assert main(["run", str(exp), "--rerun", "slow"]) == 2
    assert "is still" in capsys.readouterr().err
    assert main(["run", str(exp), "--rerun", "other"]) == 2
    assert "use one of: slow" in capsys.readouterr().err
    assert ((exp / STATE_NAME).read_bytes(), (exp / "run-experiment.log").read_bytes()) == before

    first = read_state(exp)["slow"]["job_id"]
    executor = LocalExecutor(exp / LOCAL_STATE_DIR)
    executor.cancel([first])  # it ends while nobody watches: the state file still says it runs
    deadline = time.monotonic() + 20
    while executor.states([first])[first].state != "CANCELLED":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (tmp_path / "quick").touch()
    assert main(["run", str(exp), "--rerun", "slow", "--poll", "0.2", "--no-live"]) == 0
    run = read_state(exp)["slow"]
    assert run["state"] == "COMPLETED" and run["attempts"] == [{"job_id": first, "state": "CANCELLED", "exit_code": None}]


def test_ctrl_c_leaves_jobs_running_and_says_how_to_reattach(tmp_path):
    exp = tmp_path / "exp"
    make_run(exp, "a", f"sleep 2\ntouch {tmp_path}/finished")
    monitor = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "run", str(exp), "--executor", "local", "--poll", "0.2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while "SUBMIT_JOB" not in actions(exp):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    monitor.send_signal(signal.SIGINT)
    output, _ = monitor.communicate(timeout=20)
    assert monitor.returncode == 130
    assert f"ck run --resume {exp}" in output and "Traceback" not in output
    assert "DETACH" in actions(exp)
    deadline = time.monotonic() + 20
    while not (tmp_path / "finished").exists():  # the job outlived its monitor
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_last_train_metrics_skips_partial_and_non_train_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert last_train_metrics(path) is None
    path.write_text('{"event": "train", "step": 5, "loss": 1.5}\n{"event": "val", "step": 5, "val_loss": 1}\n{"event": "tr')
    assert last_train_metrics(path) == (5, 1.5)


def test_bad_input_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", str(tmp_path / "empty"), "--executor", "local"]) == 2
    assert "no scaffolded run" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "empty"), "--executor", "local"]) == 2


def test_run_takes_an_experiment_name_under_the_scratch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CK_SCRATCH", str(tmp_path / "scratch"))
    exp = tmp_path / "scratch" / "ck-experiments" / "named"
    make_run(exp, "a", "true")
    assert main(["run", "named", "--executor", "local", "--poll", "0.2", "--no-live"]) == 0
    assert read_state(exp)["a"]["state"] == "COMPLETED"
    assert main(["run", "missing", "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such experiment directory" in err and "\n" not in err


def test_status_takes_an_experiment_name_under_the_scratch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CK_SCRATCH", str(tmp_path / "scratch"))
    exp = tmp_path / "scratch" / "ck-sanity-checks" / "named"
    make_run(exp, "a", "true")
    assert main(["status", "named", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["experiment_dir"] == str(exp.resolve()) and not status["submitted"]
    assert main(["status", "missing"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such experiment directory" in err and "\n" not in err


@pytest.mark.slurm
def test_slurm_time_limit_is_timeout(overtime_experiment):
    final = run_experiment(overtime_experiment, executor="slurm", resume=True, poll=POLL, live=False, out=io.StringIO())
    assert final == {"overtime": "TIMEOUT"}
    entry = next(e for e in explog.read_log(overtime_experiment, "run") if e.action == "JOB_TIMEOUT")
    job_log = Path(entry.fields["Command"].removeprefix("tail "))
    assert job_log.name == f"slurm-{read_state(overtime_experiment)['overtime']['job_id']}.out"
    assert "started" in job_log.read_text()
