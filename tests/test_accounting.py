"""`## Accounting` in experiment_summary.md (cruijff_kit/accounting.py) and the sacct usage parser.
The SLURM database path is tested in test_slurm_accounting.py."""

from __future__ import annotations

from cruijff_kit.executors import parse_sacct_usage
from cruijff_kit.summarize import summarize_experiment
from test_summarize import _healthy_runs, _write_experiment


def test_sacct_usage_takes_elapsed_and_cpus_from_the_allocation_and_rss_from_the_largest_step():
    text = "\n".join([
        "41|125|250|billing=2,cpu=2,gres/gpu=1,mem=1G,node=1|",
        "41.batch|125|250|cpu=2,gres/gpu=1,mem=1G,node=1|52340K",
        "41.extern|125|250|billing=2,cpu=2,node=1|1.5M",
        "42|7|7|cpu=1,mem=64M,node=1|",
        "99|1|1|cpu=1|5G",  # not asked for
    ])
    usage = parse_sacct_usage(text, ["41", "42"])
    assert set(usage) == {"41", "42"}
    assert usage["41"].elapsed_s == 125 and abs(usage["41"].cpu_hours - 250 / 3600) < 1e-9
    assert abs(usage["41"].gpu_hours - 125 / 3600) < 1e-9
    assert usage["41"].max_rss_bytes == 52340 * 1024
    assert usage["42"].gpu_hours == 0 and usage["42"].max_rss_bytes is None


def test_summary_gets_an_accounting_section_with_planned_and_used_time(tmp_path):
    from cruijff_kit.monitor import RunState, RunStateFile

    exp_dir = _write_experiment(tmp_path, _healthy_runs())
    state = RunStateFile(exp_dir)
    state.executor = "local"
    state.runs = {"parity_run": RunState(job_id="local-1", state="COMPLETED", exit_code=0,
                                         running_since=1000.0, ended_at=1000.0 + 3723)}
    state.save()
    summarize_experiment(exp_dir, plots=False)
    text = (exp_dir / "experiment_summary.md").read_text()
    section = text.split("## Accounting", 1)[1]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ") and "_run" in line}
    assert "| local-1 | COMPLETED |" in rows["parity_run"] and "| 1:02:03 |" in rows["parity_run"]
    assert "| - | NOT_SUBMITTED |" in rows["probabilistic_run"]
    assert "no accounting database" in section and "used 1:02:03" in section


def test_accounting_sets_each_runs_planned_steps_beside_the_steps_it_ran(tmp_path):
    from cruijff_kit.design import planned_steps
    from cruijff_kit.experiment import Experiment
    from cruijff_kit.monitor import RunState, RunStateFile

    exp_dir = _write_experiment(tmp_path, _healthy_runs())
    state = RunStateFile(exp_dir)
    state.executor = "local"
    state.runs = {"parity_run": RunState(job_id="local-1", state="COMPLETED", exit_code=0)}
    state.save()
    result = summarize_experiment(exp_dir, plots=False)
    ran = {r.name: r.steps for r in result.runs}
    plan = {r.name: planned_steps(r) for r in Experiment.load(exp_dir).runs}
    args = {r.name: r.dataset.args() for r in Experiment.load(exp_dir).runs}
    hyper = {r.name: r.hyper for r in Experiment.load(exp_dir).runs}
    for name, steps in plan.items():  # ceil(training rows / batch) x epochs
        rows = args[name].N - args[name].val_size
        assert steps == -(-rows // hyper[name].batch_size) * hyper[name].epochs
    section = (exp_dir / "experiment_summary.md").read_text().split("## Accounting", 1)[1]
    for name in plan:
        assert f"| {name} | " in section and f"| {plan[name]} / {ran[name]} |" in section
    assert f"{sum(ran.values())} of {sum(plan.values())} planned optimizer steps run" in section
