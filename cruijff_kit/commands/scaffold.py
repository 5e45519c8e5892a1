"""`ck scaffold EXP_DIR [--force]`: datasets, run directories and configs for every run of a plan."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = textwrap.fill(
        "Prepare every run of EXP_DIR's plan (experiment_summary.md): generate its dataset or reuse one "
        "whose provenance matches, build the embedded tiny model if needed, and write EXP_DIR/<run>/ with "
        "setup_finetune.yaml, finetune.yaml and finetune.slurm, plus each run's output directory. "
        "Re-running an unchanged plan changes nothing; when a file would change, nothing is written and "
        "the diff is shown unless --force. Actions are logged in EXP_DIR/scaffold-experiment.log."
    )
    parser.epilog = (
        "example: ck scaffold ck-scratch/ck-sanity-checks/sanity_check_bit_sequences_2025-10-28\n"
        "next step: ck run EXP_DIR\n"
        "one run by hand: cd EXP_DIR/<run> && python -m cruijff_kit.tools.torchtune.setup_finetune --help"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("exp_dir", metavar="EXP_DIR", help="experiment directory (holds experiment_summary.md), or its name under <scratch>/ck-sanity-checks/ or ck-experiments/")
    parser.add_argument("--force", action="store_true",
                        help="rewrite scaffolded files that differ from what the plan renders now")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while generating data")


def run(args: argparse.Namespace) -> int:
    from cruijff_kit.scaffold import ScaffoldConflict, scaffold_experiment

    command = "ck scaffold " + shlex.quote(args.exp_dir) + (" --force" if args.force else "")
    try:
        result = scaffold_experiment(args.exp_dir, force=args.force, command=command, progress=not args.no_progress and sys.stderr.isatty())
    except ScaffoldConflict as conflict:
        print(conflict.diff, end="" if conflict.diff.endswith("\n") else "\n")
        raise
    print(result.summary())
    return 0
