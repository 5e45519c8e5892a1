"""`ck status EXP_DIR`: one poll of the experiment's jobs, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from cruijff_kit.executors import is_terminal
from cruijff_kit.experiment import require_experiment
from cruijff_kit.monitor import experiment_status, format_table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show each run's job id, state, elapsed time and last training step and loss, with one "
        "scheduler query for all jobs. It only reads: nothing is submitted, started, cancelled or "
        "written (`ck run --resume EXP_DIR` records the states in the run log and the Jobs table). "
        "Exit code 0 unless a job ended in a state other than COMPLETED.")
    parser.add_argument("exp_dir", metavar="EXP_DIR", help="experiment directory given to `ck run`, "
                        "or its name under <scratch>/ck-sanity-checks/ or ck-experiments/")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def run(args: argparse.Namespace) -> int:
    status = experiment_status(require_experiment(args.exp_dir))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"{status['experiment_dir']}  executor: {status['executor'] or '-'}")
        print("\n".join(format_table(status["runs"])))
        for row in status["runs"]:
            if row["message"]:
                print(f"  {row['run']}: {row['message']}")
        if not status["submitted"]:
            print(f"nothing submitted yet: ck run {status['experiment_dir']}")
    ended_badly = [r for r in status["runs"] if is_terminal(r["state"]) and r["state"] != "COMPLETED"]
    return 1 if ended_badly else 0

