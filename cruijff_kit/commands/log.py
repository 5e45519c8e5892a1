"""`ck log`: append one entry to an experiment's workflow log (how skills record their decisions)."""

from __future__ import annotations

import argparse

from cruijff_kit import explog
from cruijff_kit.experiment import find_experiment_dir, require_experiment


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Append one entry to EXP_DIR/design-experiment.log (or the scaffold/run log): "
        "`[time] ACTION: description` followed by Command/Result/Explanation lines."
    )
    parser.epilog = ('example: ck log EXP_DIR CHOOSE_BIT_LENGTH "bit_length 12 for val_size 256" '
                     '--result "2^12 = 4096 >> 256" --explanation "keeps de-duplication from eating the training set"')
    parser.add_argument("exp_dir", metavar="EXP_DIR", help="the experiment directory, or its name under <scratch>/ck-sanity-checks/ or ck-experiments/")
    parser.add_argument("action", metavar="ACTION", help="UPPER_SNAKE_CASE, e.g. DECIDE_NOISE_LEVELS")
    parser.add_argument("description", help="one line: what was decided or done")
    parser.add_argument("--command", default="", help="the command that was run, if any")
    parser.add_argument("--result", default="", help="what came out")
    parser.add_argument("--explanation", default="", help="why")
    parser.add_argument("--log", default="design", choices=sorted(explog.LOG_NAMES),
                        help="which workflow log (default: design)")


def run(args: argparse.Namespace) -> int:
    exp_dir = require_experiment(args.exp_dir)
    entry = explog.append_entry(exp_dir, args.log, args.action, args.description, command=args.command,
                                result=args.result, explanation=args.explanation)
    print(f"{explog.log_path(exp_dir, args.log)}: [{entry.timestamp}] {entry.action}")
    return 0
