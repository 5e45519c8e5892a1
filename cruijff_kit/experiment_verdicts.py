"""Experiment-level verdicts: what the runs of one experiment show taken together.

Generic machinery; the check says which of its generator arguments each verdict runs along
(`Check.convergence_axis`, `Check.floor_axis`, `Check.convergence_tolerance`) and may add its own
(`Check.experiment_checks`). Only runs that trained to their end are used; a run not run yet is
never a reason to FAIL.

- steps-to-target (per run): the first validation step at which the answer metric reached its target:
  learnable runs, val_answer_acc >= the run's target accuracy (scaled down by the share of validation
  strings its check set aside as uninferable); floor runs, val_answer_loss within the run's floor window
  [floor - margin, floor + margin + 0.02]. Never reached: None ("not reached").
- convergence speed (learnable runs, along the convergence axis, seeds pooled): the median steps-to-target
  of each axis value, "not reached" counted as slower than any step. INCONCLUSIVE when fewer than two
  axis values have a median that reached the target (too few converged). FAIL when a larger axis value
  converges faster than a smaller one by more than the tolerance: median(larger) < (1 - tolerance) x
  median(smaller) - one validation interval. Otherwise PASS.
- floor curve (floor runs, at least two values of the floor axis): PASS when every run's judged final loss
  sits in its window [floor - margin, floor + margin + 0.02] (or the run's own check PASSed it, whose window
  may be wider); FAIL naming the runs outside.
- train/val tracking (every finished run): over the last TRACKING_FRACTION of the steps, the mean validation
  answer loss (shifted by judged - final when the check set strings aside) minus the mean training answer
  loss. A run overfits when the gap exceeds OVERFIT_NATS + the run's noise margin and validation is above
  OVERFIT_RATIO x training; one overfitting run FAILs the check.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
TRACKING_FRACTION = 0.25
OVERFIT_NATS = 0.1
OVERFIT_RATIO = 1.5
EPS_NATS = 0.01
EXTRA_ABOVE_NATS = 0.02
MAX_NAMED = 12


@dataclass
class ExperimentVerdict:
    check: str          # "convergence speed", "floor curve", "train/val tracking", or a check's own
    verdict: str
    reason: str         # one line a person can read, naming the runs used
    runs: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunFacts:
    """What the experiment-level checks need of one finished run."""

    name: str
    kind: str                      # learnable | floor
    args: Any                      # the check's generator arguments (or None)
    summary: Any                   # summarize.RunSummary
    metrics: list[dict]
    val_every: int | None = None   # run_val_every_n_steps


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" (+{len(names) - MAX_NAMED} more)" if len(names) > MAX_NAMED else "")


def _val_rows(metrics: Sequence[dict]) -> list[dict]:
    return sorted((r for r in metrics if r.get("event") == "val" and isinstance(r.get("step"), (int, float))),
                  key=lambda r: r["step"])


def floor_window(summary) -> tuple[float, float] | None:
    floor = summary.floor_nats
    if floor is None:
        return None
    margin = summary.loss_margin_nats if summary.loss_margin_nats is not None else EPS_NATS
    return floor - margin, floor + margin + EXTRA_ABOVE_NATS


def steps_to_target(facts: RunFacts) -> int | None:
    """The first validation step at which the run reached its target (module docstring); None if never."""
    s = facts.summary
    for row in _val_rows(facts.metrics):
        if facts.kind == "learnable":
            acc = row.get("val_answer_acc")
            target = s.target_accuracy if s.target_accuracy is not None else 0.99
            n = row.get("val_examples") or s.val_examples
            if n and s.uninferable:
                target *= max(n - len(s.uninferable), 0) / n
            if isinstance(acc, (int, float)) and acc >= target - 1e-12:
                return int(row["step"])
        else:
            window = floor_window(s)
            loss = row.get("val_answer_loss")
            if window and isinstance(loss, (int, float)) and window[0] <= loss <= window[1]:
                return int(row["step"])
    return None


def convergence_speed(points: Sequence[tuple[float, int | None, str]], axis: str, tolerance: float,
                      quantum: int = 0) -> ExperimentVerdict:
    """points: (axis value, steps-to-target or None, run name). See the module docstring."""
    runs = [name for _, _, name in points]
    groups: dict[float, list[int | None]] = {}
    for x, steps, _ in points:
        groups.setdefault(x, []).append(steps)
    medians = {x: statistics.median([math.inf if s is None else s for s in v]) for x, v in sorted(groups.items())}
    table = "; ".join(f"{axis} {x:g}: " + ("not reached" if math.isinf(m) else f"{m:g}")
                      + f" ({sum(s is not None for s in groups[x])}/{len(groups[x])} reached)"
                      for x, m in medians.items())
    rule = f"tolerance {tolerance:.0%} + one validation interval ({quantum} steps)"
    detail = {"axis": axis, "medians": {str(x): (None if math.isinf(m) else m) for x, m in medians.items()},
              "steps": {name: steps for _, steps, name in points}, "tolerance": tolerance, "quantum": quantum}
    reached = [x for x, m in medians.items() if not math.isinf(m)]
    if len(groups) < 2:
        return ExperimentVerdict("convergence speed", INCONCLUSIVE,
                                 f"needs at least two values of {axis}; median steps-to-target {table}; runs {_named(runs)}",
                                 runs, detail)
    if len(reached) < 2:
        return ExperimentVerdict("convergence speed", INCONCLUSIVE,
                                 f"too few runs reached the target to compare {axis} values (median steps-to-target "
                                 f"{table}); train longer or use more seeds; runs {_named(runs)}", runs, detail)
    xs = list(medians)
    for i, small in enumerate(xs):
        for large in xs[i + 1:]:
            if not math.isinf(medians[large]) and medians[large] < (1 - tolerance) * medians[small] - quantum:
                slow = "not reached" if math.isinf(medians[small]) else f"{medians[small]:g} steps"
                return ExperimentVerdict(
                    "convergence speed", FAIL,
                    f"{axis} {large:g} converged faster ({medians[large]:g} steps) than {axis} {small:g} ({slow}), "
                    f"beyond the {rule}; median steps-to-target {table}; runs {_named(runs)}", runs, detail)
    return ExperimentVerdict("convergence speed", PASS,
                             f"steps-to-target do not fall as {axis} grows ({rule}): median {table}; runs {_named(runs)}",
                             runs, detail)


def floor_curve(facts: Sequence[RunFacts], axis: str) -> ExperimentVerdict:
    runs = [f.name for f in facts]
    outside, points = [], {}
    for f in facts:
        s = f.summary
        loss = s.judged_loss if s.judged_loss is not None else s.final_val_answer_loss
        window = floor_window(s)
        points[f.name] = loss
        inside = loss is not None and window is not None and window[0] <= loss <= window[1]
        if not inside and s.verdict != PASS:  # a run its check passed sits in the check's own window
            where = "no final loss" if loss is None or window is None else f"{loss:.4f} not in [{window[0]:.4f}, {window[1]:.4f}]"
            outside.append(f"{f.name} {where}")
    values = sorted({getattr(f.args, axis) for f in facts})
    detail = {"axis": axis, "values": values, "final_loss": points}
    if outside:
        return ExperimentVerdict("floor curve", FAIL, f"{len(outside)}/{len(facts)} runs off the floor H({axis}): "
                                 f"{'; '.join(outside[:MAX_NAMED])}", runs, detail)
    return ExperimentVerdict("floor curve", PASS, f"every run within its floor window across {axis} "
                             f"{', '.join(f'{v:g}' for v in values)}; runs {_named(runs)}", runs, detail)


def tracking_gap(facts: RunFacts) -> tuple[float, float, float] | None:
    """(mean val, mean train, threshold) over the last TRACKING_FRACTION of the steps; None without data."""
    val = [(r["step"], r["val_answer_loss"]) for r in _val_rows(facts.metrics)
           if isinstance(r.get("val_answer_loss"), (int, float))]
    train = [(r["step"], r["train_answer_loss"]) for r in facts.metrics
             if r.get("event") == "train" and isinstance(r.get("step"), (int, float))
             and isinstance(r.get("train_answer_loss"), (int, float))]
    if not val or not train:
        return None
    last = max(val[-1][0], train[-1][0])
    cut = last * (1 - TRACKING_FRACTION)
    val_tail = [v for s, v in val if s >= cut] or [val[-1][1]]
    train_tail = [v for s, v in train if s >= cut] or [train[-1][1]]
    s = facts.summary
    shift = 0.0
    if s.judged_loss is not None and s.final_val_answer_loss is not None:
        shift = s.judged_loss - s.final_val_answer_loss  # strings the check set aside
    mean_val = sum(val_tail) / len(val_tail) + shift
    mean_train = sum(train_tail) / len(train_tail)
    margin = s.loss_margin_nats if s.loss_margin_nats is not None else EPS_NATS
    return mean_val, mean_train, OVERFIT_NATS + margin


def train_val_tracking(facts: Sequence[RunFacts]) -> ExperimentVerdict:
    runs = [f.name for f in facts]
    gaps, overfit = {}, []
    for f in facts:
        got = tracking_gap(f)
        if got is None:
            continue
        val, train, threshold = got
        gaps[f.name] = round(val - train, 4)
        if val - train > threshold and val > OVERFIT_RATIO * train:
            overfit.append(f"{f.name} (val {val:.3f} vs train {train:.3f}, gap {val - train:.3f} > {threshold:.3f})")
    rule = (f"gap = mean validation - mean training answer loss over the last {TRACKING_FRACTION:.0%} of steps; "
            f"overfitting: gap > {OVERFIT_NATS} nats + noise margin and validation > {OVERFIT_RATIO}x training")
    detail = {"gaps": gaps}
    if not gaps:
        return ExperimentVerdict("train/val tracking", INCONCLUSIVE, f"no run logged both curves ({rule})", runs, detail)
    if overfit:
        return ExperimentVerdict("train/val tracking", FAIL, f"overfitting: {'; '.join(overfit)} ({rule})", runs, detail)
    worst = max(gaps, key=lambda k: gaps[k])
    return ExperimentVerdict("train/val tracking", PASS, f"validation tracks training in every run (largest gap "
                             f"{gaps[worst]:+.3f} nats, {worst}; {rule}); runs {_named(list(gaps))}", list(gaps), detail)


def experiment_verdicts(check, facts: Sequence[RunFacts]) -> list[ExperimentVerdict]:
    """The verdicts that apply to one check's finished runs (convergence needs two values of its axis,
    the floor curve two values of its own; tracking applies to every run)."""
    out: list[ExperimentVerdict] = []
    axis = getattr(check, "convergence_axis", None)
    if axis:
        learnable = [f for f in facts if f.kind == "learnable" and f.args is not None and hasattr(f.args, axis)]
        if len({getattr(f.args, axis) for f in learnable}) >= 2:
            points = [(float(getattr(f.args, axis)), steps_to_target(f), f.name) for f in learnable]
            quantum = max((f.val_every or 0) for f in learnable)
            out.append(convergence_speed(points, axis, check.convergence_tolerance, quantum))
    axis = getattr(check, "floor_axis", None)
    if axis:
        floors = [f for f in facts if f.kind == "floor" and f.args is not None and hasattr(f.args, axis)]
        if len({getattr(f.args, axis) for f in floors}) >= 2:
            out.append(floor_curve(floors, axis))
    if facts:
        out.append(train_val_tracking(facts))
    if check is not None:
        out += check.experiment_checks(list(facts))
    return out
