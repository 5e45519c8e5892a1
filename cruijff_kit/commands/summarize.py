"""`ck summarize EXP_DIR`: per-run numbers, plots and a PASS / FAIL / INCONCLUSIVE verdict."""

from __future__ import annotations

import argparse
import json
import textwrap

from cruijff_kit.summarize import PLOTS_DIR, RESULTS_HEADING, SUMMARY_JSON, summarize_experiment, verdict_table


def _checks():
    from cruijff_kit.checks import registered

    return registered().values()


def _paragraphs(text: str) -> str:
    return "\n\n".join(textwrap.fill(p, width=88) for p in text.split("\n\n"))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Judge every run of an experiment: final and best validation answer-token loss and "
                          "accuracy, the floor each should reach, and a PASS / FAIL / INCONCLUSIVE verdict with "
                          "its reason; plus plots, summary.json and the Results section of experiment_summary.md.")
    parser.add_argument("exp_dir", metavar="EXP_DIR",
                        help="experiment directory (holds experiment_summary.md), or its name under "
                        "<scratch>/ck-sanity-checks/ or ck-experiments/")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON instead of the verdict table")
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help=f"only print: do not write {PLOTS_DIR}/, {SUMMARY_JSON} or the ## {RESULTS_HEADING} section")
    parser.epilog = _paragraphs(
        "Reads <output_dir>/logs/metrics.jsonl and val_predictions.jsonl of each run and the run's dataset. "
        f"Writes {PLOTS_DIR}/<run>.png, {PLOTS_DIR}/comparison.png, {SUMMARY_JSON} and the ## {RESULTS_HEADING} "
        "section of experiment_summary.md (none of them while no run has run yet). Exit status 0 only when every "
        "run and every experiment-level verdict is PASS, 1 otherwise.\n\n"
        "Experiment-level verdicts (cruijff_kit/experiment_verdicts.py), over the runs that trained to their end: "
        "convergence speed (steps-to-target must not fall as the check's convergence variable grows, seeds pooled, "
        "25% tolerance + one validation interval; INCONCLUSIVE when too few reached the target), floor curve "
        "(every floor run in its window across the floor variable), train/val tracking (overfitting FAILs). A "
        "sweep adds steps_to_target.png, floor_curve.png and validation_curves.png. Runs not run yet: NOT RUN or "
        "PENDING, never FAIL.\n\n"
        "Verdicts (answer-token loss in nats; generic rules in the docstring of cruijff_kit/summarize.py): a "
        "learnable run PASSes at validation accuracy >= its target, a floor run when its loss is within about "
        "2 standard errors of its floor (below it: FAIL, information leaked). Short of the goal: INCONCLUSIVE "
        "while the loss was still falling (train longer), else FAIL. No validation rows, or no metrics from a job that ended: FAIL."
        + "".join(f"\n\n{c.name}: {c.verdict_rules}" for c in _checks() if c.verdict_rules)
    )


def run(args: argparse.Namespace) -> int:
    from cruijff_kit.experiment import require_experiment

    result = summarize_experiment(require_experiment(args.exp_dir), write=args.write)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(verdict_table(result))
        if result.summary_json:
            print(f"wrote {result.summary_json}, {PLOTS_DIR}/ and ## {RESULTS_HEADING} in experiment_summary.md")
    return result.exit_code
