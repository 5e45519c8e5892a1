"""Step 4: per-run numbers, plots and a PASS / FAIL / INCONCLUSIVE verdict.

`summarize_experiment(exp_dir)` reads, for every run of the plan, `<output_dir>/logs/metrics.jsonl`,
`<output_dir>/logs/val_predictions.jsonl` and the run's dataset file, judges the run with
`judge_run` (a pure function of those three and the run's expectation), draws the plots, and writes
`## Results` of experiment_summary.md and `summary.json` beside it.

Verdict rules
-------------

All losses are the cross-entropy at the answer token, in nats; "accuracy" is argmax at the answer
token == label. n is the number of validation examples judged. "The noise margin" of a loss is
2 standard errors plus EPS_NATS: 2 * s / sqrt(n) + 0.01, where s is the larger of (a) the standard
deviation of the per-example log-loss of an ideal predictor that says p-hat everywhere,
|ln((1 - p-hat) / p-hat)| * sqrt(p-hat (1 - p-hat)), and (b) sqrt(p-hat (1 - p-hat)) times the
standard deviation over examples of the model's log-odds of label 1 (recovered from answer_loss in
val_predictions.jsonl). (b) is how far below H(p-hat) a model whose predictions vary from string to
string lands by chance alone, when some of its variation happens to line up with random labels.
The noise margin of an accuracy is 2 * sqrt(a (1 - a) / n) + 0.01 for the ideal accuracy a.

Checked first, for every run:

1. No metrics.jsonl -> FAIL (the run never started, or wrote somewhere else). In an experiment
   (`summarize_experiment`), a run with no metrics.jsonl whose job never ran is NOT RUN (no job) or
   PENDING (its job is queued or running) instead: listed, never judged, no plot.
2. No `val` rows -> FAIL "validation was not wired" (run_val_every_n_steps 0, or no dataset_val).
3. No `end` row -> FAIL (training crashed or was killed before its end).

When `ck run` launched the runs, its record (.ck-run-state.json) adds the job's state to the reason
of a non-PASS run (e.g. "job 123 FAILED, exit 1; see slurm-123.out"); a job still PENDING or RUNNING
makes the verdict INCONCLUSIVE ("summarize again when it has ended"), and a PASS whose job did not
complete gets a warning.

Then the run's check judges it (`Check.judge`, its rules in its own docs: `ck summarize --help`
prints each registered check's summary of them). A check that leaves the verdict to the core, and
runs without a check, get the generic rule of their `expected.kind`:

- learnable: PASS when accuracy >= target_accuracy (0.99 when the plan gives none), on the
  validation inputs that do not occur in training (a leaked input tests memory, not the rule);
  below it: INCONCLUSIVE if still falling ("train longer"), else FAIL.
- floor: PASS when the loss is within the noise margin of floor_nats (2 standard errors of the
  per-example losses + EPS_NATS); below it: FAIL (information leaked); above it: INCONCLUSIVE if
  still falling, else FAIL.

A check may also compare its runs (`Check.compare`): its lines go into the verdict table and the
Results section; they do not change any verdict.
Experiment-level verdicts (convergence speed, floor curve, train/val tracking) judge the runs that
trained to their end together: cruijff_kit/experiment_verdicts.py; overall PASS needs them all PASS.

"Still falling": a robust (Theil-Sen: median pairwise slope) line through the validation answer
losses of the second half of training (the evaluations at or after the midpoint step, at least the
last two) falls by more than the noise margin, and by at least 0.03 nats, from the first of them to
the final one; with a single evaluation, the same line through the training answer losses of the
second half.

Warnings (do not change the verdict unless said above):

- validation inputs that also occur in the training split (leak; generators promise none);
- overfitting: the final validation loss (on the judged strings) is more than 0.1 nats + margin
  above and 1.5x the training answer loss at the end of training (mean of the last 10 % of steps);
- missing val_predictions.jsonl or dataset file (the subset checks are then skipped);
- whatever the run's check adds.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cruijff_kit.inputs import load_json, read_text
from cruijff_kit.errors import CkError
from cruijff_kit.experiment import SUMMARY_NAME, Experiment, binary_entropy_nats, find_experiment_dir
from cruijff_kit.fsutil import atomic_write_json
from cruijff_kit.markdown_sections import set_section

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
NOT_RUN, PENDING = "NOT RUN", "PENDING"  # a run with no metrics that never ran / whose job waits: never FAIL
EPS_NATS = 0.01
EXTRA_ABOVE_NATS = 0.02
EPS_ACC = 0.01
MIN_FALLING_NATS = 0.03
DEFAULT_TARGET_ACCURACY = 0.99
OVERFIT_NATS = 0.1
OVERFIT_RATIO = 1.5
SUMMARY_JSON = "summary.json"
RESULTS_HEADING = "Results"
PLOTS_DIR = "plots"
COMPARISON_PLOT = "comparison.png"
MAX_LISTED = 20


# ---------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class Expectation:
    """What a run should reach: the plan's `expected`, plus its check and generator arguments when known."""

    kind: str  # "learnable" | "floor"
    floor_nats: float
    target_accuracy: float | None = None
    note: str = ""
    check: Any = None  # the cruijff_kit.checks.Check that made the data
    args: Any = None   # its generator arguments (the check's Args model)


@dataclass
class Evidence:
    """What a check's `judge` sees of one run that trained to its end."""

    metrics: list[dict]
    predictions: list[dict] | None
    dataset: dict | None
    expectation: Expectation


@dataclass
class RunSummary:
    name: str
    verdict: str
    reason: str
    rule: str
    warnings: list[str] = field(default_factory=list)
    final_val_answer_loss: float | None = None
    best_val_answer_loss: float | None = None
    final_val_answer_acc: float | None = None
    best_val_answer_acc: float | None = None
    final_train_answer_loss: float | None = None
    final_train_answer_acc: float | None = None
    floor_nats: float | None = None  # the floor the verdict used (a check may measure it on the data)
    declared_floor_nats: float | None = None  # the plan's expected.floor_nats
    target_accuracy: float | None = None
    judged_loss: float | None = None
    judged_accuracy: float | None = None
    judged_examples: int | None = None
    loss_margin_nats: float | None = None
    p_hat: float | None = None
    val_examples: int | None = None
    steps: int | None = None
    still_falling: bool | None = None
    uninferable: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    metrics_path: str | None = None
    predictions_path: str | None = None
    job_id: str | None = None
    job_state: str | None = None  # from the monitor's .ck-run-state.json, when there is one
    job_log: str | None = None
    plot: str | None = None  # relative to the experiment dir

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExperimentSummary:
    name: str
    experiment_dir: str
    runs: list[RunSummary]
    comparison_plot: str | None = None
    summary_json: str | None = None
    comparisons: list[str] = field(default_factory=list)  # the checks' cross-run lines
    experiment_verdicts: list = field(default_factory=list)  # experiment_verdicts.ExperimentVerdict
    sweep_plots: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.verdict == PASS for r in self.runs)

    @property
    def all_pass(self) -> bool:
        return (bool(self.runs) and self.passed == len(self.runs)
                and all(v.verdict == PASS for v in self.experiment_verdicts))

    @property
    def exit_code(self) -> int:
        return 0 if self.all_pass else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "experiment_dir": self.experiment_dir,
            "all_pass": self.all_pass,
            "comparison_plot": self.comparison_plot,
            "comparisons": self.comparisons,
            "experiment_verdicts": [v.to_dict() for v in self.experiment_verdicts],
            "sweep_plots": self.sweep_plots,
            "runs": [r.to_dict() for r in self.runs],
        }


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike) -> list[dict] | None:
    """Rows of a JSON-lines file; None when the file does not exist. A torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return None
    rows = []
    lines = read_text(path, "metrics file", "re-run the training").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # still being written
                continue
            raise CkError(f"{path} line {i + 1}", line[:60], "is not JSON", "the file is corrupt; re-run the training") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_dataset(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    data = load_json(path, "dataset", "regenerate it (delete the file and run ck scaffold)")
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("validation"), list):
        raise CkError("dataset", str(path), "needs top-level `train` and `validation` lists", "regenerate it")
    return data


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def binary_kl(p: float, q: float) -> float:
    """KL(B(p) || B(q)) between two-outcome distributions in nats; q is clipped away from 0 and 1."""
    q = min(max(q, 1e-6), 1 - 1e-6)
    total = 0.0
    if p > 0:
        total += p * math.log(p / q)
    if p < 1:
        total += (1 - p) * math.log((1 - p) / (1 - q))
    return max(total, 0.0)


def ideal_log_loss_std(p: float) -> float:
    """Std of the per-example log-loss of a predictor that says p everywhere, labels 1 with probability p."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return abs(math.log((1 - p) / p)) * math.sqrt(p * (1 - p))


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def log_odds_of_one(prediction: dict) -> float | None:
    """The model's ln(P(1) / P(0)) for one val_predictions row, assuming its mass is on "0" and "1"."""
    loss = finite_number(prediction.get("answer_loss"))
    if loss is None:
        return None
    q_target = min(max(math.exp(-loss), 1e-4), 1 - 1e-4)
    q_one = q_target if label_of(prediction.get("target")) == "1" else 1 - q_target
    return math.log(q_one / (1 - q_one))


def loss_margin(n: int, p_hat: float, predictions: Sequence[dict] = ()) -> float:
    """2 standard errors of a mean answer loss over n examples around H(p_hat), plus EPS_NATS."""
    odds = [v for p in predictions if (v := log_odds_of_one(p)) is not None]
    chance = math.sqrt(p_hat * (1 - p_hat)) * _std(odds)
    s = max(ideal_log_loss_std(p_hat), chance)
    return 2.0 * s / math.sqrt(max(n, 1)) + EPS_NATS


def chance_pass_probability(n: int, target: float, chance: float) -> float:
    """P(a model that guesses, right with probability `chance`, reaches accuracy >= target on n rows)."""
    need = math.ceil(target * n - 1e-9)
    return sum(math.comb(n, k) * chance ** k * (1 - chance) ** (n - k) for k in range(need, n + 1))


def rows_for_chance_below(target: float, chance: float, limit: float) -> int:
    """The fewest validation rows at which guessing passes with probability <= limit."""
    n = 1
    while chance_pass_probability(n, target, chance) > limit:
        n += 1
    return n


def accuracy_margin(n: int, accuracy: float) -> float:
    a = min(max(accuracy, 0.0), 1.0)
    return 2.0 * math.sqrt(a * (1 - a) / max(n, 1)) + EPS_ACC


# ---------------------------------------------------------------------------------------------
# Facts about the data
# ---------------------------------------------------------------------------------------------


def label_of(value: Any) -> str:
    return str(value).strip()


def leaked_inputs(dataset: dict) -> list[str]:
    """Validation inputs that also occur in training."""
    train = {str(r.get("input", "")) for r in dataset.get("train") or [] if isinstance(r, dict)}
    return sorted({s for r in dataset.get("validation") or [] if isinstance(r, dict)
                   if (s := str(r.get("input", ""))) in train})


# ---------------------------------------------------------------------------------------------
# Metrics helpers
# ---------------------------------------------------------------------------------------------


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(rows: Iterable[dict], event: str, key: str) -> list[tuple[int, float]]:
    """(step, value) for every `event` row with a finite `key`; one point per step (the last)."""
    by_step: dict[int, float] = {}
    for row in rows:
        if row.get("event") != event:
            continue
        value = finite_number(row.get(key))
        step = finite_number(row.get("step"))
        if value is None or step is None:
            continue
        by_step[int(step)] = value
    return sorted(by_step.items())


def val_series(rows: Sequence[dict], key: str) -> list[tuple[int, float]]:
    return _series(rows, "val", key)


def train_series(rows: Sequence[dict], key: str) -> list[tuple[int, float]]:
    return _series(rows, "train", key)


def _final_val_row(rows: Sequence[dict]) -> dict | None:
    vals = [r for r in rows if r.get("event") == "val"]
    if not vals:
        return None
    finals = [r for r in vals if r.get("final")]
    return (finals or vals)[-1]


def _tail_mean(series: list[tuple[int, float]], fraction: float = 0.1) -> float | None:
    """Mean of the points in the last `fraction` of the steps (at least the last point)."""
    if not series:
        return None
    last = series[-1][0]
    cut = last - fraction * last
    tail = [v for s, v in series if s >= cut] or [series[-1][1]]
    return sum(tail) / len(tail)


def fitted_drop(points: Sequence[tuple[int, float]]) -> float:
    """How much a robust line through (step, loss) falls from the first point's step to the last's.

    The line's slope is the median of the pairwise slopes (Theil-Sen), so that one noisy evaluation
    (the model wanders by a few hundredths of a nat between evaluations) cannot make a flat curve look
    like a falling one, as first-minus-last or a least-squares line would.
    """
    slopes = sorted((y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
                    for x2, y2 in points[i + 1:] if x2 != x1)
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    slope = slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2
    return -slope * (points[-1][0] - points[0][0])


def _trend(drop: float) -> str:
    return f"-{drop:.3f}" if drop >= 0 else f"+{-drop:.3f}"


def loss_drop(rows: Sequence[dict]) -> tuple[float | None, str]:
    """How much the answer loss fell over the second half of training, and how it was measured."""
    val = val_series(rows, "val_answer_loss")
    if len(val) >= 2:
        window = [pt for pt in val if pt[0] >= val[-1][0] / 2]
        if len(window) < 2:
            window = val[-2:]
        drop = fitted_drop(window)
        return drop, (f"validation loss trend {_trend(drop)} over steps {window[0][0]}-{window[-1][0]}, "
                      f"{len(window)} evaluations, {window[0][1]:.3f} -> {window[-1][1]:.3f}")
    train = train_series(rows, "train_answer_loss")
    if len(train) >= 4:
        window = [pt for pt in train if pt[0] >= train[-1][0] / 2]
        drop = fitted_drop(window)
        return drop, f"training loss trend {_trend(drop)} over steps {window[0][0]}-{window[-1][0]} (one evaluation only)"
    return None, "too few points to tell"


# ---------------------------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------------------------


def listing(strings: Iterable[str]) -> str:
    items = sorted(strings)
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... (+{len(items) - MAX_LISTED})" if len(items) > MAX_LISTED else "")


def _predictions_match(predictions: list[dict], dataset: dict) -> bool:
    val = dataset.get("validation") or []
    if len(predictions) != len(val):
        return False
    return all(str(p.get("input", "")) == str(v.get("input", "")) for p, v in zip(predictions, val))


def is_correct(pred: dict) -> bool:
    return label_of(pred.get("predicted")) == label_of(pred.get("target"))


def judge_run(
    name: str,
    metrics: list[dict] | None,
    predictions: list[dict] | None,
    dataset: dict | None,
    expectation: Expectation,
) -> RunSummary:
    """The verdict for one run. Pure: the rules are in this module's docstring and the run's check."""
    rule = expectation.kind
    target = expectation.target_accuracy
    if target is None and rule == "learnable":
        target = DEFAULT_TARGET_ACCURACY
    summary = RunSummary(name=name, verdict=FAIL, reason="", rule=rule,
                         declared_floor_nats=expectation.floor_nats, floor_nats=expectation.floor_nats,
                         target_accuracy=target)
    warnings = summary.warnings

    if metrics is None:
        summary.reason = "no metrics.jsonl: the run never started or wrote its logs elsewhere"
        return summary
    train_loss = train_series(metrics, "train_answer_loss")
    train_acc = train_series(metrics, "train_answer_acc")
    val_loss = val_series(metrics, "val_answer_loss")
    val_acc = val_series(metrics, "val_answer_acc")
    summary.final_train_answer_loss = _tail_mean(train_loss)
    summary.final_train_answer_acc = _tail_mean(train_acc)
    steps = [int(s) for r in metrics if (s := finite_number(r.get("step"))) is not None]
    summary.steps = max(steps) if steps else None
    final_row = _final_val_row(metrics)
    if final_row is not None:
        summary.final_val_answer_loss = finite_number(final_row.get("val_answer_loss"))
        summary.final_val_answer_acc = finite_number(final_row.get("val_answer_acc"))
        summary.val_examples = int(finite_number(final_row.get("val_examples")) or 0) or None
        summary.best_val_answer_loss = min((v for _, v in val_loss), default=None)
        summary.best_val_answer_acc = max((v for _, v in val_acc), default=None)

    # --- facts about the data, warnings that never depend on the model
    if dataset is None:
        warnings.append("dataset file not found: leak and per-input checks skipped")
    else:
        summary.leaked = leaked_inputs(dataset)
        if summary.leaked:
            warnings.append(f"leak: {len(summary.leaked)} validation input(s) also occur in training: {listing(summary.leaked)}")
    if predictions is None:
        warnings.append("no val_predictions.jsonl: per-input checks use the metrics only")
    elif dataset is not None and not _predictions_match(predictions, dataset):
        warnings.append("val_predictions.jsonl does not list the dataset's validation split in order")
    if not train_loss and not train_acc:
        summary.reason = "training logged no steps (no `train` rows in metrics.jsonl)"
        return summary
    if final_row is None:
        summary.reason = "validation was not wired: metrics.jsonl has no `val` rows (run_val_every_n_steps 0 or no dataset_val)"
        return summary
    if not any(r.get("event") == "end" for r in metrics):
        summary.reason = f"training did not finish (no `end` row after step {summary.steps}): crashed or killed, see slurm-*.out"
        return summary

    evidence = Evidence(metrics, predictions, dataset, expectation)
    check = expectation.check
    if check is None or not check.judge(summary, evidence):
        if rule == "learnable":
            judge_learnable(summary, evidence, target)
        else:
            judge_floor(summary, evidence)
    _check_overfitting(summary)
    return summary


def _still_falling(summary: RunSummary, metrics: list[dict], margin: float) -> tuple[bool, str]:
    drop, how = loss_drop(metrics)
    falling = drop is not None and drop > max(margin, MIN_FALLING_NATS)
    summary.still_falling = falling
    return falling, how


def not_reached(summary: RunSummary, metrics: list[dict], margin: float, shortfall: str) -> None:
    """Short of the goal: INCONCLUSIVE while the loss was still falling ("train longer"), else FAIL."""
    falling, how = _still_falling(summary, metrics, margin)
    train = summary.final_train_answer_loss
    floor = summary.floor_nats or 0.0
    train_note = f"; training loss {train:.3f} vs floor {floor:.3f}" if train is not None else ""
    if falling:
        summary.verdict = INCONCLUSIVE
        summary.reason = f"{shortfall}, but the loss was still falling ({how}){train_note}: train longer"
    else:
        summary.verdict = FAIL
        summary.reason = f"{shortfall} and the loss was no longer falling ({how}){train_note}"


def judge_learnable(summary: RunSummary, evidence: Evidence, target: float, set_aside: Iterable[str] = (),
                    scope: str = "", aside: str = "", what: str = "validation inputs") -> None:
    """PASS when accuracy >= target on the validation inputs neither in `set_aside` nor leaked into
    training (all of them when that leaves none); `scope` and `aside` are words for the reason."""
    predictions, metrics = evidence.predictions, evidence.metrics
    judged = None
    set_aside = set(set_aside)
    if predictions is not None:
        judged = [p for p in predictions if str(p.get("input", "")) not in set_aside | set(summary.leaked)]
        if not judged:
            judged = [p for p in predictions if str(p.get("input", "")) not in set_aside] or predictions
    if judged:
        accuracy = sum(is_correct(p) for p in judged) / len(judged)
        losses = [v for p in judged if (v := finite_number(p.get("answer_loss"))) is not None]
        summary.judged_loss = sum(losses) / len(losses) if losses else summary.final_val_answer_loss
        summary.judged_examples = len(judged)
    else:
        accuracy = summary.final_val_answer_acc or 0.0
        summary.judged_loss = summary.final_val_answer_loss
        summary.judged_examples = summary.val_examples
        losses = []
    summary.judged_accuracy = accuracy
    n = summary.judged_examples or 1
    summary.loss_margin_nats = 2 * (_std(losses) if losses else math.log(2)) / math.sqrt(n) + EPS_NATS
    text = f"accuracy {accuracy:.3f} on {n} {scope}{what}"
    if accuracy >= target:
        summary.verdict = PASS
        summary.reason = f"{text} >= {target}{aside}"
    else:
        not_reached(summary, metrics, summary.loss_margin_nats, f"{text} < {target}{aside}")


def floor_window(summary: RunSummary, p_hat: float, p_train: float | None, predictions: Sequence[dict] | None,
                 n: int) -> tuple[float, float, float]:
    """For labels that are 1 with probability p_hat: the PASS window [low, high] of the answer loss
    around the floor H(p_hat) (see the module docstring), and the margin; records floor and margin."""
    floor = binary_entropy_nats(p_hat)
    margin = loss_margin(n, p_hat, predictions or [])
    excess = binary_kl(p_hat, p_train) if p_train is not None else 0.0
    summary.floor_nats = floor
    summary.loss_margin_nats = margin
    summary.p_hat = p_hat
    return floor - margin, floor + excess + margin + EXTRA_ABOVE_NATS, margin


def judge_floor(summary: RunSummary, evidence: Evidence) -> None:
    predictions, metrics = evidence.predictions, evidence.metrics
    n = summary.val_examples or len(predictions or []) or 1
    losses = [v for p in (predictions or []) if (v := finite_number(p.get("answer_loss"))) is not None]
    floor = evidence.expectation.floor_nats
    margin = 2 * _std(losses) / math.sqrt(n) + EPS_NATS
    summary.loss_margin_nats = margin
    loss = summary.final_val_answer_loss
    summary.judged_loss, summary.judged_accuracy, summary.judged_examples = loss, summary.final_val_answer_acc, n
    if loss is None:
        summary.reason = "the final validation row has no val_answer_loss"
    elif loss < floor - margin:
        summary.reason = f"loss {loss:.4f} below the floor {floor:.4f} by more than {margin:.4f}: information leaked"
    elif loss <= floor + margin:
        summary.verdict = PASS
        summary.reason = f"loss {loss:.4f} within {margin:.4f} of the floor {floor:.4f}"
    else:
        not_reached(summary, metrics, margin, f"loss {loss:.4f} above the floor {floor:.4f} + {margin:.4f}")


def _check_overfitting(summary: RunSummary) -> None:
    # the judged loss leaves out strings set aside (uninferable, leaked), which no training could fix
    val = summary.judged_loss if summary.judged_loss is not None else summary.final_val_answer_loss
    train = summary.final_train_answer_loss
    if val is None or train is None:
        return
    margin = summary.loss_margin_nats or EPS_NATS
    if val > train + OVERFIT_NATS + margin and val > OVERFIT_RATIO * train:
        summary.warnings.append(f"overfitting: validation loss {val:.3f} is much worse than training loss {train:.3f}")


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def expectation_for(run) -> Expectation:
    """An `Expectation` from a plan's RunPlan (expected + its check and generator arguments)."""
    expected = run.expected
    return Expectation(kind=expected.kind, floor_nats=float(expected.floor_nats),
                       target_accuracy=expected.target_accuracy, note=expected.note,
                       check=run.dataset.check_obj(), args=run.dataset.args())


def summarize_experiment(exp_dir: str | os.PathLike, *, write: bool = True, plots: bool = True) -> ExperimentSummary:
    """Judge every run of the experiment in `exp_dir` (its path, its experiment_summary.md, or its name under
    the scratch); with `write`, also plots, Results and summary.json."""
    path = Path(exp_dir).expanduser()
    # a missing path goes to Experiment.load, whose error names the experiment_summary.md it looked for
    exp_path = find_experiment_dir(path) if path.exists() or len(path.parts) == 1 else path
    exp = Experiment.load(exp_path)
    datasets: dict[Path, dict | None] = {}
    job_states = _job_states(exp_path)
    runs: list[RunSummary] = []
    curves: list[tuple[RunSummary, list[dict]]] = []
    for run in exp.runs:
        logs = exp.run_output_dir(run.name) / "logs"
        metrics_path, predictions_path = logs / "metrics.jsonl", logs / "val_predictions.jsonl"
        data_path = run.dataset.dataset_path(exp)
        if data_path not in datasets:
            datasets[data_path] = read_dataset(data_path)
        metrics = read_jsonl(metrics_path)
        summary = judge_run(run.name, metrics, read_jsonl(predictions_path), datasets[data_path], expectation_for(run))
        summary.metrics_path, summary.predictions_path = str(metrics_path), str(predictions_path)
        _annotate_job(summary, exp_path, run.name, job_states.get(run.name))
        _mark_not_run(summary, metrics, job_states.get(run.name))
        runs.append(summary)
        curves.append((summary, metrics or []))

    result = ExperimentSummary(name=exp.name, experiment_dir=str(exp_path), runs=runs,
                               comparisons=_compare(exp, runs))
    result.experiment_verdicts = _experiment_verdicts(exp, curves)
    ran = [(s, m) for s, m in curves if s.verdict not in (NOT_RUN, PENDING)]
    if write and ran:  # nothing ran yet: no Results section, no plots
        if plots:
            _draw_plots(exp_path, result, ran)
            _draw_sweep_plots(exp_path, result, exp, ran)
        result.summary_json = str(atomic_write_json(exp_path / SUMMARY_JSON, result.to_dict()))
        set_section(exp_path / SUMMARY_NAME, RESULTS_HEADING, results_markdown(result))
        _write_accounting(exp_path, exp, job_states, {s.name: s.steps for s in runs})
    return result


def _mark_not_run(summary: RunSummary, metrics: list[dict] | None, job) -> None:
    """No metrics.jsonl and no job that ended: the run has not run yet (NOT RUN, or PENDING while its job waits)."""
    if metrics is not None:
        return
    if job is None or not job.job_id:
        if job is not None and job.state == "SUBMIT_FAILED":
            return
        summary.verdict, summary.reason = NOT_RUN, "not run yet (no metrics.jsonl, no job): `ck run` launches it"
        return
    from cruijff_kit.executors import is_terminal

    if not is_terminal(job.state):
        summary.verdict, summary.reason = PENDING, f"job {job.job_id} is still {job.state}: summarize again when it has ended"


def _finished_facts(exp: Experiment, curves) -> dict[str, tuple[Any, list]]:
    """{check name: (check, [RunFacts])} for the runs that trained to their `end` row."""
    from cruijff_kit.experiment_verdicts import RunFacts

    out: dict[str, tuple[Any, list]] = {}
    for run, (summary, metrics) in zip(exp.runs, curves):
        if summary.verdict in (NOT_RUN, PENDING) or not any(r.get("event") == "end" for r in metrics):
            continue
        check = run.dataset.check_obj()
        facts = RunFacts(run.name, run.expected.kind, run.dataset.args(), summary, metrics,
                         getattr(run.hyper, "run_val_every_n_steps", None))
        out.setdefault(check.name if check else "", (check, []))[1].append(facts)
    return out


def _experiment_verdicts(exp: Experiment, curves) -> list:
    from cruijff_kit.experiment_verdicts import experiment_verdicts

    return [v for check, facts in _finished_facts(exp, curves).values() for v in experiment_verdicts(check, facts)]


def _draw_sweep_plots(exp_path: Path, result: ExperimentSummary, exp: Experiment, curves) -> None:
    """Steps-to-target vs the convergence axis, final loss vs the floor axis, every validation curve."""
    from cruijff_kit import plots

    by_name = {s.name: (s, m) for s, m in curves}
    run_args = {r.name: r.dataset.args() for r in exp.runs}
    sweep_plots = {  # verdict -> (the values it plotted, plot function, file)
        "convergence speed": ("steps", plots.plot_steps_to_target, "steps_to_target.png"),
        "floor curve": ("final_loss", plots.plot_floor_curve, "floor_curve.png"),
    }
    for v in result.experiment_verdicts:
        if v.check in sweep_plots:
            values, plot, file_name = sweep_plots[v.check]
            axis = v.detail["axis"]
            points = [(float(getattr(run_args[n], axis)), y, n) for n, y in v.detail[values].items()]
            path = plot(exp_path / PLOTS_DIR / file_name, points, axis)
            result.sweep_plots.append(f"{PLOTS_DIR}/{path.name}")
    if len(by_name) > 2:
        path = plots.plot_all_validation(exp_path / PLOTS_DIR / "validation_curves.png",
                                         [(s.name, m, s.floor_nats) for s, m in by_name.values()])
        result.sweep_plots.append(f"{PLOTS_DIR}/{path.name}")


def _write_accounting(exp_path: Path, exp: Experiment, job_states: dict, steps_run: dict) -> None:
    """`## Accounting` (cruijff_kit.accounting) when the runs were launched by `ck run`."""
    if job_states:
        from cruijff_kit.accounting import ACCOUNTING_HEADING, accounting_markdown
        from cruijff_kit.monitor import RunStateFile

        executor = RunStateFile.load(exp_path).executor
        set_section(exp_path / SUMMARY_NAME, ACCOUNTING_HEADING, accounting_markdown(exp, job_states, executor, steps_run))


def _compare(exp: Experiment, runs: list[RunSummary]) -> list[str]:
    """Each check's lines about its runs taken together (`Check.compare`)."""
    by_check: dict[str, tuple[Any, list]] = {}
    for run, summary in zip(exp.runs, runs):
        check = run.dataset.check_obj()
        if check is not None:
            by_check.setdefault(check.name, (check, []))[1].append((run.dataset.args(), summary))
    return [line for check, pairs in by_check.values() for line in check.compare(pairs)]


def _job_states(exp_path: Path) -> dict:
    """Each run's job as of now, in the monitor's states ({} when the runs were not launched by `ck run`)."""
    try:
        from cruijff_kit.monitor import experiment_runs

        return experiment_runs(exp_path)
    except CkError:
        return {}


def _annotate_job(summary: RunSummary, exp_path: Path, run_name: str, job) -> None:
    """Say what happened to the job when the metrics alone cannot (a crash, a timeout, never submitted)."""
    if job is None:
        return
    summary.job_id, summary.job_state = job.job_id, job.state
    if job.job_id:
        try:
            from cruijff_kit.executors import job_log_path

            summary.job_log = str(job_log_path(exp_path / run_name, job.job_id))
        except Exception:  # the log path is a hint; a missing finetune.slurm must not stop the summary
            summary.job_log = None
    if job.state == "COMPLETED":
        return
    from cruijff_kit.executors import is_terminal

    if job.job_id and not is_terminal(job.state) and summary.verdict != PASS:
        summary.verdict = INCONCLUSIVE
        summary.reason = f"job {job.job_id} is still {job.state}: summarize again when it has ended ({summary.reason})"
        return
    exit_note = f", exit {job.exit_code}" if job.exit_code is not None else ""
    log_note = f"; see {summary.job_log}" if summary.job_log else ""
    note = f"job {job.job_id or '(not submitted)'} {job.state}{exit_note}{log_note}"
    if summary.verdict == PASS:
        summary.warnings.append(f"the numbers pass but the {note}")
    else:
        summary.reason += f" ({note})"


def _draw_plots(exp_path: Path, result: ExperimentSummary, curves) -> None:
    from cruijff_kit import plots

    plot_dir = exp_path / PLOTS_DIR
    for summary, metrics in curves:
        path = plot_dir / f"{summary.name}.png"
        plots.plot_run(path, summary.name, metrics, floor=summary.floor_nats,
                       target_accuracy=summary.target_accuracy, verdict=summary.verdict)
        summary.plot = f"{PLOTS_DIR}/{path.name}"
    plots.plot_comparison(plot_dir / COMPARISON_PLOT,
                          [(s.name, m, s.floor_nats, s.target_accuracy) for s, m in curves])
    result.comparison_plot = f"{PLOTS_DIR}/{COMPARISON_PLOT}"


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_markdown(result: ExperimentSummary) -> str:
    lines = [
        f"Overall: **{'PASS' if result.all_pass else 'NOT PASS'}** "
        f"({result.passed}/{len(result.runs)} runs PASS). "
        "Answer-token loss in nats; the floor is the lowest loss any model can reach on the run's data "
        "(its check may measure it on the validation split). Rules: `ck summarize --help`.",
        "",
        "| run | verdict | final val loss | best val loss | floor | final val acc | best val acc | target acc | reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.runs:
        if r.verdict in (NOT_RUN, PENDING):
            continue
        lines.append(
            f"| {r.name} | **{r.verdict}** | {_fmt(r.final_val_answer_loss)} | {_fmt(r.best_val_answer_loss)} | "
            f"{_fmt(r.floor_nats)} | {_fmt(r.final_val_answer_acc, 3)} | {_fmt(r.best_val_answer_acc, 3)} | "
            f"{_fmt(r.target_accuracy, 3)} | {_md_cell(r.reason)} |")
    if result.comparisons:
        lines += ["", "Across runs:", ""] + [f"- {_md_cell(c)}" for c in result.comparisons]
    waiting = [f"{r.name} ({r.verdict})" for r in result.runs if r.verdict in (NOT_RUN, PENDING)]
    if waiting:
        lines += ["", f"Not judged yet ({len(waiting)}; summarize again when they have run): {', '.join(waiting)}"]
    lines += _experiment_verdicts_markdown(result)
    for r in result.runs:
        if r.warnings:
            lines += ["", f"Warnings for {r.name}:", ""] + [f"- {_md_cell(w)}" for w in r.warnings]
    plots_lines = [f"![{r.name}]({r.plot})" for r in result.runs if r.plot]
    if result.comparison_plot:
        plots_lines.append(f"![all runs]({result.comparison_plot})")
    plots_lines += [f"![{Path(p).stem}]({p})" for p in result.sweep_plots]
    if plots_lines:
        lines += ["", "Plots (dashed: floor / target accuracy):", ""] + plots_lines
    return "\n".join(lines)


def _experiment_verdicts_markdown(result: ExperimentSummary) -> list[str]:
    if not result.experiment_verdicts:
        return []
    lines = ["", "Experiment-level verdicts (runs that trained to their end; rules: cruijff_kit/experiment_verdicts.py):", "",
             "| check | verdict | reason |", "|---|---|---|"]
    lines += [f"| {v.check} | **{v.verdict}** | {_md_cell(v.reason)} |" for v in result.experiment_verdicts]
    steps = next((v.detail["steps"] for v in result.experiment_verdicts if v.check == "convergence speed"), None)
    if steps:
        lines += ["", "Steps to target: " + ", ".join(
            f"{name} {'not reached' if s is None else s}" for name, s in steps.items())]
    return lines


def verdict_table(result: ExperimentSummary) -> str:
    header = ("run", "verdict", "val loss", "floor", "val acc", "target", "reason")
    rows = [header] + [
        (r.name, r.verdict, _fmt(r.final_val_answer_loss), _fmt(r.floor_nats), _fmt(r.final_val_answer_acc, 3),
         _fmt(r.target_accuracy, 3), r.reason)
        for r in result.runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    out = []
    for row in rows:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for r in result.runs:
        for w in r.warnings:
            out.append(f"  warning [{r.name}]: {w}")
    for line in result.comparisons:
        out.append(f"  across runs: {line}")
    for v in result.experiment_verdicts:
        out.append(f"experiment: {v.check}: {v.verdict}: {v.reason}")
    overall = "PASS" if result.all_pass else "NOT PASS"
    waiting = sum(r.verdict in (NOT_RUN, PENDING) for r in result.runs)
    out.append(f"overall: {overall} ({result.passed}/{len(result.runs)} runs PASS"
               + (f", {waiting} not run yet" if waiting else "") + ")")
    return "\n".join(out)
