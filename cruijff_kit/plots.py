"""Training curves as PNG files (matplotlib, Agg backend: no display needed).

Per run: answer-token loss and accuracy over optimizer steps, training and validation, with the
floor (and the target accuracy) drawn as dashed lines. One more figure compares all runs.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from cruijff_kit.fsutil import atomic_write_bytes  # noqa: E402
from cruijff_kit.summarize import train_series, val_series  # noqa: E402

_VERDICT_COLOURS = {"PASS": "tab:green", "FAIL": "tab:red", "INCONCLUSIVE": "tab:orange"}


def _save(fig, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _xy(series):
    return [s for s, _ in series], [v for _, v in series]


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="grey")


def _clip_early_losses(ax, train, val, floor) -> None:
    """Scale the loss axis to the part of training that matters: the first steps of a fresh LoRA
    run often sit at several nats (the answer token is not yet "0"/"1") and would flatten the rest."""
    last = max(s for s, _ in (train or val))
    later = [v for s, v in train if s >= 0.2 * last] + [v for _, v in val] + ([floor] if floor is not None else [])
    if not later:
        return
    top = max(later) * 1.15 + 0.05
    everything = [v for _, v in train] + [v for _, v in val]
    if max(everything) > top:
        ax.set_ylim(0, top)
        ax.text(0.01, 0.99, "early steps clipped", transform=ax.transAxes, va="top", fontsize=7, color="grey")
    else:
        ax.set_ylim(bottom=0)


def plot_run(path: str | os.PathLike, name: str, metrics: Sequence[dict], *, floor: float | None,
             target_accuracy: float | None, verdict: str | None = None) -> Path:
    """Two panels: answer loss (train, validation, floor) and answer accuracy (train, validation, target)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    panels = (
        (ax_loss, "train_answer_loss", "val_answer_loss", floor, "floor", "answer-token loss (nats)"),
        (ax_acc, "train_answer_acc", "val_answer_acc", target_accuracy, "target", "answer-token accuracy"),
    )
    for ax, train_key, val_key, line, line_label, ylabel in panels:
        train, val = train_series(metrics, train_key), val_series(metrics, val_key)
        if train:
            ax.plot(*_xy(train), color="tab:blue", alpha=0.8, label="training")
        if val:
            ax.plot(*_xy(val), color="tab:orange", marker="o", label="validation")
        if not train and not val:
            _no_data(ax, ylabel)
        if line is not None:
            ax.axhline(line, color="black", linestyle="--", linewidth=1, label=f"{line_label} {line:.3f}")
        if ax is ax_loss and (train or val):
            _clip_early_losses(ax, train, val, line)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    title = name + (f": {verdict}" if verdict else "")
    fig.suptitle(title, color=_VERDICT_COLOURS.get(verdict or "", "black"))
    return _save(fig, path)


def plot_comparison(path: str | os.PathLike,
                    runs: Sequence[tuple[str, Sequence[dict], float | None, float | None]]) -> Path:
    """Validation answer loss and accuracy of every run; each run's floor/target dashed in its colour."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, metrics, floor, target) in enumerate(runs):
        colour = colours[i % len(colours)]
        for ax, key, line in ((ax_loss, "val_answer_loss", floor), (ax_acc, "val_answer_acc", target)):
            val = val_series(metrics, key)
            if not val:  # fall back to the training curve so a run without validation still shows
                val = train_series(metrics, key.replace("val_", "train_"))
                style = {"linestyle": ":", "label": f"{name} (training; no validation)"}
            else:
                style = {"marker": "o", "label": name}
            if val:
                ax.plot(*_xy(val), color=colour, **style)
            if line is not None:
                ax.axhline(line, color=colour, linestyle="--", linewidth=1)
    for ax, ylabel in ((ax_loss, "validation answer loss (nats)"), (ax_acc, "validation answer accuracy")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("all runs (dashed: floor / target accuracy)")
    return _save(fig, path)


# ---- sweep figures (experiment-level verdicts)


def plot_steps_to_target(path: str | os.PathLike, points: Sequence[tuple[float, int | None, str]], axis: str) -> Path:
    """One point per run (seed) at its axis value, the median line across values; "not reached" drawn as
    crosses on a dashed line above the highest step."""
    import statistics

    fig, ax = plt.subplots(figsize=(6, 4))
    reached = [(x, s) for x, s, _ in points if s is not None]
    ceiling = max((s for _, s in reached), default=1) * 1.15 + 1
    if reached:
        ax.scatter(*zip(*reached), color="tab:blue", alpha=0.7, label="a run (seed)")
    missed = [x for x, s, _ in points if s is None]
    if missed:
        ax.scatter(missed, [ceiling] * len(missed), marker="x", color="tab:red", label="target not reached")
        ax.axhline(ceiling, color="tab:red", linestyle="--", linewidth=1)
    xs = sorted({x for x, _, _ in points})
    medians = [statistics.median([ceiling if s is None else s for x2, s, _ in points if x2 == x]) for x in xs]
    ax.plot(xs, medians, color="black", marker="s", label="median")
    ax.set_xlabel(axis)
    ax.set_ylabel("steps to target (first validation at target)")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"convergence speed across {axis}")
    return _save(fig, path)


def plot_floor_curve(path: str | os.PathLike, points: Sequence[tuple[float, float | None, str]], axis: str) -> Path:
    """Final validation answer loss of each floor run against its axis value, with the analytic H(p) dashed."""
    from cruijff_kit.experiment import binary_entropy_nats

    fig, ax = plt.subplots(figsize=(6, 4))
    grid = [i / 200 for i in range(1, 200)]
    ax.plot(grid, [binary_entropy_nats(p) for p in grid], color="black", linestyle="--", linewidth=1,
            label=f"H({axis}) (floor)")
    got = [(x, y) for x, y, _ in points if y is not None]
    if got:
        ax.scatter(*zip(*got), color="tab:orange", zorder=3, label="final validation answer loss")
    ax.set_xlabel(axis)
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"loss floor across {axis}")
    return _save(fig, path)


def plot_all_validation(path: str | os.PathLike, runs: Sequence[tuple[str, Sequence[dict], float | None]]) -> Path:
    """Every run's validation answer loss on shared axes; each floor dashed in its run's colour."""
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, metrics, floor) in enumerate(runs):
        colour = colours[i % len(colours)]
        val = val_series(metrics, "val_answer_loss")
        if val:
            ax.plot(*_xy(val), color=colour, marker=".", linewidth=1, label=name)
        if floor is not None:
            ax.axhline(floor, color=colour, linestyle="--", linewidth=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation answer loss (nats)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    ax.set_title("all runs' validation curves (dashed: floors)")
    return _save(fig, path)
