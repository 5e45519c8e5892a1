"""Job arrays (`ck run --array`): runs of one shape as one `sbatch --array`, each task its own job.

The array script is plain bash: its task dispatch is tested here by running it with the variables
SLURM sets for an array task; everything else on the real local SLURM of the test session
(conftest: with accounting and its QOS `capped`, MaxSubmitJobsPerUser=2).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from cruijff_kit import explog
from cruijff_kit.cli import main
from cruijff_kit.executors import SlurmExecutor, array_script_text, array_shape, index_ranges, job_log_path
from cruijff_kit.monitor import ARRAYS_DIR, STATE_NAME, run_experiment
from conftest import SLURM_ACCOUNTING
from test_executors import make_run

POLL = 0.5
CK = [sys.executable, "-m", "cruijff_kit"]


def read_state(exp_dir: Path) -> dict:
    return json.loads((exp_dir / STATE_NAME).read_text())["runs"]


def log_entries(exp_dir: Path, action: str) -> list:
    return [e for e in explog.read_log(exp_dir, "run") if e.action == action]


def expand(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


# ---------------------------------------------------------------- without a scheduler


@given(st.sets(st.integers(min_value=0, max_value=400), min_size=1))
def test_index_ranges_is_sbatch_array_syntax_for_exactly_those_indices(indices):
    spec = index_ranges(list(indices))
    assert expand(spec) == sorted(indices)
    assert len(spec.split(",")) == 1 + sum(1 for i in indices if i > min(indices) and i - 1 not in indices)


def test_runs_that_differ_only_in_name_and_logs_share_a_shape(tmp_path):
    a = make_run(tmp_path / "exp", "a", "true")
    b = make_run(tmp_path / "exp", "b", "true", out_root=tmp_path / "elsewhere")
    bigger = make_run(tmp_path / "exp", "bigger", "#SBATCH --mem=128M\ntrue")  # a second --mem: the later wins
    assert array_shape(a) == array_shape(b) == (("mem", "64M"),)
    assert array_shape(bigger) == (("mem", "128M"),)
    short = make_run(tmp_path / "exp", "short", "true")
    text = (short / "finetune.slurm").read_text().replace("#SBATCH --mem=64M", "#SBATCH -N 1\n#SBATCH --mem=64M")
    (short / "finetune.slurm").write_text(text)
    assert array_shape(short) is None  # an option not read here: never put into an array


def test_array_task_runs_its_run_in_its_directory_logging_where_a_single_job_would(tmp_path):
    exp = tmp_path / "exp"
    runs = [make_run(exp, f"r{i}", f'echo "run {i} in $PWD pid $$"\necho "to stderr {i}" >&2\nexit {i + 3}')
            for i in range(3)]
    # r2 keeps stderr apart, as `#SBATCH --error` allows
    script_text = (runs[2] / "finetune.slurm").read_text()
    (runs[2] / "finetune.slurm").write_text(script_text.replace("--error=" + str(tmp_path / "outputs" / "ck-out-r2" / "slurm-%j.out"),
                                                                "--error=err-%j.txt"))
    for run_dir in runs:
        (job_log_path(run_dir, "0")).parent.mkdir(parents=True, exist_ok=True)
    script = exp / ARRAYS_DIR / "exp-array1.sbatch"
    script.parent.mkdir()
    script.write_text(array_script_text(script, runs))
    text = script.read_text()
    assert "#SBATCH --job-name=exp-array1" in text and "#SBATCH --mem=64M" in text
    assert f"#SBATCH --output={script.parent}/exp-array1-%A_%a.out" in text

    for task in (1, 2):
        env = {**os.environ, "SLURM_ARRAY_JOB_ID": "900", "SLURM_ARRAY_TASK_ID": str(task)}
        proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env)
        assert proc.wait(timeout=30) == task + 3  # the run's exit status is the task's
        log = job_log_path(runs[task], f"900_{task}")
        # exec: finetune.slurm is the task's batch shell itself (same pid), so --signal=B:... reaches it
        assert f"run {task} in {runs[task]} pid {proc.pid}" in log.read_text()
        errors = job_log_path(runs[task], f"900_{task}", "error")
        assert f"to stderr {task}" in errors.read_text()
    assert job_log_path(runs[2], "900_2", "error") == runs[2] / "err-900_2.txt"
    assert not job_log_path(runs[0], "900_0").exists()

    stray = subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_JOB_ID": "900", "SLURM_ARRAY_TASK_ID": "3"},
                           capture_output=True, text=True, timeout=30)
    assert stray.returncode == 1 and "no run for this task" in stray.stderr


def test_sacct_lines_of_array_tasks_keep_their_ids_and_exit_codes():
    text = ("7_0|COMPLETED|0:0|2026-12-03T09:00:51|2026-12-03T09:00:56\n"
            "7_1|FAILED|3:0|2026-12-03T09:00:51|2026-12-03T09:00:57\n"
            "7_2|CANCELLED by 0|0:9|2026-12-03T09:00:51|2026-12-03T09:00:58\n"
            "8|FAILED|2:0|2026-12-03T09:00:51|2026-12-03T09:00:59\n")
    infos = SlurmExecutor._parse_sacct(text, ["7_0", "7_1", "7_2"])
    assert {i: (info.state, info.exit_code) for i, info in infos.items()} == {
        "7_0": ("COMPLETED", 0), "7_1": ("FAILED", 3), "7_2": ("CANCELLED", 137)}


def test_runs_of_different_shapes_never_share_an_array_script(tmp_path):
    a = make_run(tmp_path / "exp", "a", "true")
    b = make_run(tmp_path / "exp", "b", "#SBATCH --mem=128M\ntrue")
    with pytest.raises(ValueError, match="different shapes"):
        array_script_text(tmp_path / "x.sbatch", [a, b])


@pytest.mark.parametrize("flags", [["--array"], ["--array-throttle", "2"]])
def test_array_with_the_local_executor_is_a_one_line_error_that_records_nothing(tmp_path, capsys, flags):
    exp = tmp_path / "exp"
    for name in ("a", "b"):
        make_run(exp, name, "true")
    assert main(["run", str(exp), "--executor", "local", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--array" in err and "no job arrays" in err and "--executor slurm" in err
    assert not (exp / STATE_NAME).exists() and not (exp / ARRAYS_DIR).exists()


# ---------------------------------------------------------------- on the real local SLURM


@pytest.mark.slurm
def test_four_runs_of_one_shape_under_a_qos_cap_of_two_go_as_arrays_beside_a_single_job(tmp_path):
    if not SLURM_ACCOUNTING:
        pytest.skip("needs the QOS `capped` of the accounting mode")
    exp = tmp_path / "exp"
    same = [f"same{i}" for i in range(4)]
    for name in same:
        make_run(exp, name, f"#SBATCH --qos=capped\necho \"$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID\" > {tmp_path}/{name}.ran\nsleep 1")
    # another shape, outside the capped QOS: it takes no capped slot, so the first pass has room for an array of 2
    make_run(exp, "other", "#SBATCH --mem=96M\necho ran > " + str(tmp_path / "other.ran"))
    out = io.StringIO()
    final = run_experiment(exp, executor="slurm", array=True, poll=POLL, live=True, out=out)
    assert final == {**{name: "COMPLETED" for name in same}, "other": "COMPLETED"}, out.getvalue()[-3000:]

    runs = read_state(exp)
    ids = {name: runs[name]["job_id"] for name in runs}
    assert len(set(ids.values())) == 5 and not any(r["attempts"] for r in runs.values())
    assert ids["other"].isdigit() and runs["other"]["array"] is None  # alone in its shape: a single job
    in_arrays = [name for name in same if "_" in ids[name]]
    assert len(in_arrays) >= 2  # the cap of 2 lets at most 2 tasks in at once, so arrays of 2 (and singles)
    for name in in_arrays:
        base, _, task = ids[name].partition("_")
        script_name, _, index = runs[name]["array"].rpartition(":")
        assert index == task and (exp / ARRAYS_DIR / script_name).is_file()
        assert (tmp_path / f"{name}.ran").read_text().split() == [base, task]  # task i ran run i, once
        assert job_log_path(exp / name, ids[name]).is_file()  # where a single job's log would be
    # nothing submitted twice: one SUBMIT_JOB per run with its final id; the arrays logged as such
    assert sorted(e.fields["Job ID"] for e in log_entries(exp, "SUBMIT_JOB")) == sorted(ids.values())
    arrays = log_entries(exp, "SUBMIT_ARRAY")
    assert arrays and all("--array=" in e.fields["Command"] for e in arrays)
    assert {ids[name].partition("_")[0] for name in in_arrays} == {e.fields["Job ID"] for e in arrays}
    assert not log_entries(exp, "SUBMIT_FAILED")
    # the cap was met and waited for, never failed
    assert log_entries(exp, "SUBMIT_WAIT")


@pytest.mark.slurm
def test_array_throttle_and_max_submit_bound_what_is_queued_and_resume_tracks_the_tasks(tmp_path):
    exp = tmp_path / "exp"
    names = [f"t{i}" for i in range(5)]
    for name in names:
        make_run(exp, name, "sleep 3")
    states = run_experiment(exp, executor="slurm", max_submit=3, detach=True, poll=POLL, live=False,
                            out=io.StringIO(), array_throttle=2)
    submitted = {name: s for name, s in read_state(exp).items() if s["job_id"]}
    assert len(submitted) == 3 and all("_" in s["job_id"] for s in submitted.values())
    assert [e.fields["Command"].split("--array=")[1].split()[0] for e in log_entries(exp, "SUBMIT_ARRAY")] == ["0-2%2"]
    base = next(iter(submitted.values()))["job_id"].partition("_")[0]
    squeue = subprocess.run(["squeue", "-h", "-r", "-j", base, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    running = [line for line in squeue.stdout.splitlines() if line.endswith("RUNNING")]
    assert len(running) <= 2  # the throttle
    assert set(states.values()) <= {"PENDING", "RUNNING", "NOT_SUBMITTED"}

    # a new monitor (no --array given again) keeps the tasks' ids and submits the other two runs singly
    final = run_experiment(exp, executor="slurm", resume=True, max_submit=3, poll=POLL, live=False, out=io.StringIO())
    assert final == {name: "COMPLETED" for name in names}
    after = read_state(exp)
    assert all(after[name]["job_id"] == s["job_id"] for name, s in submitted.items())
    later = [name for name in names if name not in submitted]
    assert all(after[name]["job_id"].isdigit() for name in later)
    assert sorted(e.fields["Job ID"] for e in log_entries(exp, "SUBMIT_JOB")) == sorted(r["job_id"] for r in after.values())


@pytest.mark.slurm
def test_an_array_submitted_before_its_ids_were_recorded_is_adopted_not_repeated(tmp_path):
    exp = tmp_path / "exp"
    runs = {name: make_run(exp, name, f"echo ran >> {tmp_path}/{name}_runs") for name in ("a", "b")}
    script = exp / ARRAYS_DIR / "exp-array1.sbatch"
    script.parent.mkdir()
    script.write_text(array_script_text(script, list(runs.values())))
    t0 = time.time()
    ids = SlurmExecutor().submit_array(script, {0: runs["a"], 1: runs["b"]})  # then the monitor was killed
    (exp / STATE_NAME).write_text(json.dumps({"version": 1, "executor": "slurm", "runs": {
        "a": {"submit_intent": t0, "array": "exp-array1.sbatch:0"},
        "b": {"submit_intent": t0, "array": "exp-array1.sbatch:1"}}}))
    final = run_experiment(exp, executor="slurm", array=True, poll=POLL, live=False, out=io.StringIO())
    assert final == {"a": "COMPLETED", "b": "COMPLETED"}
    state = read_state(exp)
    assert {name: state[name]["job_id"] for name in runs} == {"a": ids[0], "b": ids[1]}
    assert (tmp_path / "a_runs").read_text() == (tmp_path / "b_runs").read_text() == "ran\n"  # each ran once
    assert not log_entries(exp, "SUBMIT_ARRAY")  # nothing new was submitted


@pytest.mark.slurm
def test_a_failed_array_task_is_its_own_job_and_its_rerun_is_a_single_job(tmp_path, capsys):
    exp = tmp_path / "exp"
    marker = tmp_path / "fixed"
    make_run(exp, "good", "true")
    make_run(exp, "bad", f"[ -e {marker} ] || {{ echo 'broken input' >&2; exit 4; }}")
    final = run_experiment(exp, executor="slurm", array=True, poll=POLL, live=False, out=io.StringIO())
    assert final == {"good": "COMPLETED", "bad": "FAILED"}
    bad_id = read_state(exp)["bad"]["job_id"]
    assert "_" in bad_id and read_state(exp)["bad"]["exit_code"] == 4
    failure = log_entries(exp, "JOB_FAILED")
    assert len(failure) == 1 and "broken input" in failure[0].fields["Explanation"]  # the task's own log
    marker.touch()
    assert main(["run", str(exp), "--executor", "slurm", "--rerun", "bad", "--poll", str(POLL), "--no-live"]) == 0
    state = read_state(exp)["bad"]
    assert state["attempts"][0]["job_id"] == bad_id and state["job_id"].isdigit() and state["array"] is None


@pytest.mark.slurm
@pytest.mark.training
def test_array_experiment_of_four_trained_runs_completes_with_four_verdicts(tmp_path, monkeypatch):
    if not SLURM_ACCOUNTING:
        pytest.skip("needs the QOS `capped` of the accounting mode")
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    env = {**os.environ, "CK_SCRATCH": str(scratch), "CK_CONFIG": str(tmp_path / "settings.yaml"),
           "CK_DATA_DIR": str(data), "WANDB_MODE": "offline", "CK_SLURM_QOS": "capped"}
    env.pop("CK_MODELS_DIR", None)
    for key in ("CK_SCRATCH", "CK_CONFIG", "CK_DATA_DIR", "WANDB_MODE"):
        monkeypatch.setenv(key, env[key])  # sbatch exports the submitting environment to the job
    design = subprocess.run([*CK, "design", "bit-sequences", "--preset", "embedded", "--yes", "--name", "arr",
                             "--seeds", "2", "--N", "600", "--val-size", "32", "--max-steps-per-epoch", "12"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert design.returncode == 0, design.stderr
    exp = scratch / "ck-sanity-checks" / "arr"
    scaffold = subprocess.run([*CK, "scaffold", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert scaffold.returncode == 0, scaffold.stderr
    names = sorted(p.parent.name for p in exp.glob("*/finetune.slurm"))
    assert len(names) == 4 and all("#SBATCH --qos=capped" in (exp / n / "finetune.slurm").read_text() for n in names)

    run = subprocess.run([*CK, "run", str(exp), "--executor", "slurm", "--array", "--poll", str(POLL), "--no-live"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    state = read_state(exp)
    assert sorted(state) == names and any("_" in r["job_id"] for r in state.values())
    assert log_entries(exp, "SUBMIT_ARRAY")
    summarize = subprocess.run([*CK, "summarize", str(exp)], env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=300)
    assert summarize.returncode in (0, 1), summarize.stderr
    verdicts = {r["name"]: r["verdict"] for r in json.loads((exp / "summary.json").read_text())["runs"]}
    assert sorted(verdicts) == names
    assert set(verdicts.values()) <= {"PASS", "FAIL", "INCONCLUSIVE"}
