"""Sweeps in the plan and the experiment-level verdicts, on planted synthetic metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from cruijff_kit.design import build_plan
from cruijff_kit.errors import CkError
from cruijff_kit.experiment import Experiment, binary_entropy_nats
from cruijff_kit.experiment_verdicts import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    RunFacts,
    convergence_speed,
    experiment_verdicts,
    steps_to_target,
)
from cruijff_kit.settings import load_settings
from cruijff_kit.summarize import NOT_RUN, Expectation, judge_run, summarize_experiment
from sanity_checks.bit_sequences.check import CHECK, BitSequenceArgs

VAL_EVERY = 50


def _settings(tmp_path: Path):
    return load_settings({"scratch": str(tmp_path / "scratch"), "data_dir": str(tmp_path / "data")},
                         env={}, path=tmp_path / "settings.yaml")


# --------------------------------------------------------------------------- sweeps in the plan


def test_sweep_is_the_product_of_the_values_with_readable_names(tmp_path):
    exp = build_plan("bit_sequences", "embedded", settings=_settings(tmp_path), name="sweep",
                     overrides={"bit_length": [4, 6, 8], "p": [0.1, 0.3, 0.5], "seeds": 3})
    names = [r.name for r in exp.runs]
    # parity runs do not depend on p: bit lengths x seeds; Bernoulli runs: bit lengths x p x seeds
    assert len(names) == 3 * 3 + 3 * 3 * 3 == len(set(names))
    assert "parity_L6_s2" in names and "bernoulli_L8_p03_s1" in names
    run = exp.get_run("parity_L6_s2")
    assert run.dataset.generator["bit_length"] == 6 and run.hyper.seed == exp.get_run("parity_L6_s1").hyper.seed + 1
    assert exp.get_run("bernoulli_L4_p01_s3").dataset.generator["p"] == 0.1
    again = build_plan("bit_sequences", "embedded", settings=_settings(tmp_path), name="sweep",
                       overrides={"bit_length": [4, 6, 8], "p": [0.1, 0.3, 0.5], "seeds": 3})
    assert [r.name for r in again.runs] == names  # stable


def test_no_sweep_keeps_the_two_preset_runs(tmp_path):
    exp = build_plan("bit_sequences", "embedded", settings=_settings(tmp_path), name="plain")
    assert [r.name for r in exp.runs] == ["parity_run", "probabilistic_run"]


@hsettings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(6, 14), min_size=1, max_size=4, unique=True), seeds=st.integers(1, 4))
def test_sweep_run_count_is_the_product(tmp_path_factory, lengths, seeds):
    tmp = tmp_path_factory.mktemp("sweep")
    exp = build_plan("bit_sequences", "embedded", settings=_settings(tmp), name="s",
                     overrides={"bit_length": lengths if len(lengths) > 1 else lengths[0], "seeds": seeds})
    assert len(exp.runs) == 2 * len(lengths) * seeds
    assert {r.dataset.generator["bit_length"] for r in exp.runs} == set(lengths)


def test_a_list_for_a_variable_that_is_not_swept_is_refused(tmp_path):
    class NoSweep(type(CHECK)):
        sweep_variables = ()

    with pytest.raises(CkError) as err:
        build_plan(NoSweep(), "embedded", settings=_settings(tmp_path), name="x", overrides={"bit_length": [6, 8]})
    assert "--bit-length" in str(err.value) and "one value" in str(err.value)


def test_ck_design_sweep_shows_count_variables_and_warns_when_too_large(tmp_path):
    env_cmd = [sys.executable, "-m", "cruijff_kit", "design", "bit-sequences", "--name", "grid",
               "--scratch", str(tmp_path / "scratch"), "--data-dir", str(tmp_path / "data"),
               "--bit-length", "8,10,12", "--p", "0.1,0.3,0.5", "--seeds", "3", "--yes"]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "36 runs" in proc.stdout and "executor local" in proc.stdout
    assert "long queue" in proc.stderr  # 36 runs on 2 local slots
    text = (tmp_path / "scratch" / "ck-sanity-checks" / "grid" / "experiment_summary.md").read_text()
    assert "- `dataset.generator.bit_length`: 8, 10, 12 (3 values)" in text
    assert "- `dataset.generator.p`: 0.0, 0.1, 0.3, 0.5 (4 values)" in text
    log = (tmp_path / "scratch" / "ck-sanity-checks" / "grid" / "design-experiment.log").read_text()
    assert "--bit-length 8,10,12" in log and "--seeds 3" in log
    exp = Experiment.load(tmp_path / "scratch" / "ck-sanity-checks" / "grid")
    assert "parity_L10_s3" in [r.name for r in exp.runs]


# --------------------------------------------------------------------------- planted metrics


def metrics_reaching(step_reached: int | None, *, steps: int = 600, train_end: float = 0.01,
                     val_end: float = 0.01) -> list[dict]:
    """A learnable run whose validation accuracy jumps to 1.0 at `step_reached` (None: never)."""
    rows = []
    for step in range(10, steps + 1, 10):
        done = step_reached is not None and step >= step_reached
        rows.append({"event": "train", "step": step, "epoch": 0, "wall_time": 0.0, "time": 0.0, "loss": 0.5,
                     "train_answer_loss": train_end if done else 0.69, "train_answer_acc": 1.0 if done else 0.5})
        if step % VAL_EVERY == 0:
            rows.append({"event": "val", "step": step, "epoch": 0, "wall_time": 0.0, "time": 0.0,
                         "val_answer_loss": val_end if done else 0.69, "val_answer_acc": 1.0 if done else 0.5,
                         "val_examples": 64, "final": step == steps})
    rows.append({"event": "end", "step": steps, "epoch": 0, "wall_time": 1.0, "time": 0.0, "steps": steps})
    return rows


LEARN = Expectation(kind="learnable", floor_nats=0.0, target_accuracy=0.99)


def facts(name: str, length: int, metrics: list[dict], expectation: Expectation = LEARN, p: float = 0.0) -> RunFacts:
    summary = judge_run(name, metrics, None, None, expectation)
    args = BitSequenceArgs(bit_length=length, N=2000, val_size=64, bit_parity=expectation.kind == "learnable", p=p)
    return RunFacts(name, expectation.kind, args, summary, metrics, VAL_EVERY)


def sweep(steps_by_length: dict[int, list[int | None]]) -> list[RunFacts]:
    return [facts(f"parity_L{L}_s{i + 1}", L, metrics_reaching(s))
            for L, seeds in steps_by_length.items() for i, s in enumerate(seeds)]


def verdict_of(check_name: str, runs: list[RunFacts]):
    return next(v for v in experiment_verdicts(CHECK, runs) if v.check == check_name)


def test_steps_to_target_is_the_first_validation_at_target():
    assert steps_to_target(facts("a", 6, metrics_reaching(230))) == 250
    assert steps_to_target(facts("a", 6, metrics_reaching(None))) is None


def test_steps_growing_with_bit_length_pass():
    v = verdict_of("convergence speed", sweep({4: [100, 150], 6: [200, 250], 8: [400, None]}))
    assert v.verdict == PASS, v.reason
    assert "parity_L8_s2" in v.reason and "25%" in v.reason


def test_longest_strings_converging_fastest_fail():
    v = verdict_of("convergence speed", sweep({4: [400, 450], 6: [300, 300], 8: [100, 100]}))
    assert v.verdict == FAIL, v.reason
    assert "converged faster" in v.reason and "bit_length 8" in v.reason


def test_too_few_converged_is_inconclusive():
    v = verdict_of("convergence speed", sweep({4: [100, None], 6: [None, None], 8: [None, 300]}))
    assert v.verdict == INCONCLUSIVE, v.reason
    assert "too few" in v.reason


@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=3, max_size=3))
def test_nondecreasing_medians_never_fail(increments):
    steps, total = {}, 0
    for L, inc in zip((4, 6, 8), increments):
        total += inc * 50
        steps[float(L)] = total
    points = [(x, s, f"r{x}") for x, s in steps.items()]
    assert convergence_speed(points, "bit_length", 0.25, VAL_EVERY).verdict == PASS
    reversed_points = [(x, steps[y], f"r{x}") for x, y in zip(sorted(steps), sorted(steps, reverse=True))]
    assert convergence_speed(reversed_points, "bit_length", 0.0, 0).verdict == FAIL


def test_an_overfitting_run_fails_tracking_and_a_tracking_one_passes():
    healthy = facts("parity_L6_s1", 6, metrics_reaching(200))
    overfit = facts("parity_L8_s1", 8, metrics_reaching(200, train_end=0.01, val_end=0.6))
    v = verdict_of("train/val tracking", [healthy, overfit])
    assert v.verdict == FAIL and "parity_L8_s1" in v.reason and "parity_L6_s1" not in v.reason.split("(rule")[0]
    assert verdict_of("train/val tracking", [healthy]).verdict == PASS


def floor_metrics(final_loss: float, steps: int = 300) -> list[dict]:
    rows = [{"event": "train", "step": s, "train_answer_loss": final_loss, "train_answer_acc": 0.5}
            for s in range(10, steps + 1, 10)]
    rows += [{"event": "val", "step": s, "val_answer_loss": final_loss, "val_answer_acc": 0.5, "val_examples": 4000,
              "final": s == steps} for s in range(VAL_EVERY, steps + 1, VAL_EVERY)]
    return rows + [{"event": "end", "step": steps, "steps": steps}]


def test_floor_curve_pass_and_a_run_off_its_floor_fails():
    def run(p, loss):
        e = Expectation(kind="floor", floor_nats=binary_entropy_nats(p))
        return facts(f"bernoulli_L8_p{p}", 8, floor_metrics(loss), e, p)

    on = [run(p, binary_entropy_nats(p)) for p in (0.1, 0.3, 0.5)]
    assert verdict_of("floor curve", on).verdict == PASS
    off = on[:2] + [run(0.5, 0.3)]
    v = verdict_of("floor curve", off)
    assert v.verdict == FAIL and "bernoulli_L8_p0.5" in v.reason


def test_one_bit_length_gives_no_convergence_verdict():
    assert [v.check for v in experiment_verdicts(CHECK, sweep({8: [100, 200]}))] == ["train/val tracking"]


# --------------------------------------------------------------------------- partly finished experiments


def _sweep_experiment(tmp_path: Path, metrics_by_run: dict[str, list[dict]]) -> Path:
    exp = build_plan("bit_sequences", "embedded", settings=_settings(tmp_path), name="partial",
                     overrides={"bit_length": [8, 10], "seeds": 1})
    exp_dir = Path(exp.experiment_dir)
    exp_dir.mkdir(parents=True)
    (exp_dir / "experiment_summary.md").write_text("# t\n\n## Plan\n\n```yaml\n" + exp.plan_yaml() + "```\n")
    for name, rows in metrics_by_run.items():
        logs = exp.run_output_dir(name) / "logs"
        logs.mkdir(parents=True)
        (logs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return exp_dir


def test_partly_finished_runs_are_not_run_never_fail(tmp_path):
    exp_dir = _sweep_experiment(tmp_path, {"parity_L8_s1": metrics_reaching(200)})
    result = summarize_experiment(exp_dir)
    verdicts = {r.name: r.verdict for r in result.runs}
    assert verdicts["parity_L10_s1"] == NOT_RUN and verdicts["bernoulli_L8_s1"] == NOT_RUN
    assert "FAIL" not in {verdicts[n] for n in verdicts if n != "parity_L8_s1"}
    text = (exp_dir / "experiment_summary.md").read_text()
    assert "parity_L10_s1 (NOT RUN)" in text and "| parity_L10_s1 |" not in text
    assert not (exp_dir / "plots" / "parity_L10_s1.png").exists() and (exp_dir / "plots" / "parity_L8_s1.png").exists()
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "summarize", str(exp_dir), "--json", "--no-write"],
                          capture_output=True, text=True)
    assert "experiment_verdicts" in json.loads(proc.stdout)


def test_nothing_run_writes_no_results_or_plots(tmp_path):
    exp_dir = _sweep_experiment(tmp_path, {})
    result = summarize_experiment(exp_dir)
    assert {r.verdict for r in result.runs} == {NOT_RUN}
    assert "## Results" not in (exp_dir / "experiment_summary.md").read_text()
    assert not (exp_dir / "plots").exists()


def test_sweep_summary_has_experiment_verdicts_and_sweep_plots(tmp_path):
    exp_dir = _sweep_experiment(tmp_path, {"parity_L8_s1": metrics_reaching(150),
                                           "parity_L10_s1": metrics_reaching(300)})
    result = summarize_experiment(exp_dir)
    conv = next(v for v in result.experiment_verdicts if v.check == "convergence speed")
    assert conv.verdict == PASS, conv.reason
    text = (exp_dir / "experiment_summary.md").read_text()
    assert "| convergence speed | **PASS** |" in text
    png = (exp_dir / "plots" / "steps_to_target.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((exp_dir / "summary.json").read_text())
    assert [v["check"] for v in saved["experiment_verdicts"]][0] == "convergence speed"
