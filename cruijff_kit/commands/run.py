"""`ck run EXP_DIR`: submit the scaffolded runs (SLURM or local processes) and monitor them to the end."""

from __future__ import annotations

import argparse

from cruijff_kit.errors import CkError
from cruijff_kit.executors import is_terminal
from cruijff_kit.experiment import find_experiment_dir
from cruijff_kit.monitor import DEFAULT_POLL, RunStateFile, run_experiment
from cruijff_kit.settings import load_settings


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Submit every scaffolded run of EXP_DIR that has no job (never submitted, or refused earlier: "
        "SUBMIT_FAILED), record the job ids in EXP_DIR/.ck-run-state.json and run-experiment.log, and show "
        "a live table (run, job id, state, elapsed, last step and loss) until every job has ended. "
        "With --executor slurm the controller must answer first (`scontrol ping`), else nothing is "
        "submitted (exit 2). Ctrl-C or --detach leaves the jobs running; `ck run --resume EXP_DIR` "
        "reattaches without submitting any run twice. A run whose job ended badly gets a new job only "
        "when asked: --rerun RUN. Exit code 0 only if every run COMPLETED (with --detach: if no run "
        "has ended badly).")
    parser.epilog = ("examples: ck run EXP_DIR --executor slurm --max-submit 4   |   "
                     "ck run EXP_DIR --executor slurm --array --array-throttle 8   |   ck run --resume EXP_DIR   |   "
                     "ck run EXP_DIR --rerun RUN_NAME")
    parser.add_argument("exp_dir", metavar="EXP_DIR", help="experiment directory (holds experiment_summary.md and one dir per run), "
                             "or its name under <scratch>/ck-sanity-checks/ or ck-experiments/")
    parser.add_argument("--executor", choices=("local", "slurm"), default=None,
                        help="slurm: sbatch each run's finetune.slurm; local: run it as a local process "
                             "(default: the executor already recorded for EXP_DIR's jobs, else the `executor` "
                             "setting, see `ck config show`)")
    parser.add_argument("--max-submit", type=_positive_int, metavar="N", default=None,
                        help="at most N jobs of this experiment queued or running at once; the rest are "
                             "submitted as earlier ones end (for clusters with a queue cap)")
    parser.add_argument("--array", action="store_true",
                        help="slurm only: submit the runs that share their #SBATCH resources (all lines but "
                             "job-name/output/error) as one job array each (EXP_DIR/.ck-arrays/*.sbatch; task i runs "
                             "run i, with its log where a single job's goes); every task is tracked as its own job "
                             "JOBID_i, a run alone in its shape is a single job. Off by default and not remembered "
                             "(give it again with --resume for the runs still without a job); with --max-submit "
                             "or a QOS submit cap (which counts every task) arrays go in chunks that fit")
    parser.add_argument("--array-throttle", type=_positive_int, metavar="M", default=None,
                        help="at most M tasks of each array running at once (sbatch --array=...%%M; implies --array; "
                             "default: --max-submit N, else no limit)")
    parser.add_argument("--stagger", type=_seconds, metavar="S", default=0.0, help="seconds between submissions (default 0)")
    parser.add_argument("--poll", type=_seconds, metavar="S", default=None,
                        help=f"seconds between status polls (default {DEFAULT_POLL:g}; one squeue per poll for all jobs)")
    parser.add_argument("--detach", action="store_true", help="submit, then return at once leaving the jobs running")
    parser.add_argument("--resume", action="store_true", help="reattach to the jobs recorded in EXP_DIR/.ck-run-state.json")
    parser.add_argument("--rerun", action="append", metavar="RUN", default=[],
                        help="give RUN, whose job has ended (FAILED, CANCELLED, ...), a new job after you fixed "
                             "the cause; the old job stays in the state file's attempts and in the log (repeatable)")
    parser.add_argument("--retry-oom", type=int, metavar="N", default=None,
                        help="resubmit a run that ran out of GPU memory up to N times, halving batch_size each time "
                             "(default: `oom` in EXP_DIR/retry_policy.yaml, else 0)")
    parser.add_argument("--retry-node-fail", type=int, metavar="N", default=None,
                        help="resubmit a run whose job ended NODE_FAIL, PREEMPTED or BOOT_FAIL up to N times; it resumes "
                             "from its last epoch checkpoint (default: `node_fail` in EXP_DIR/retry_policy.yaml, else 1). "
                             "Other failures are never retried: fix the cause, then --rerun RUN")
    parser.add_argument("--lost-after", type=_seconds, metavar="S", default=None,
                        help="call a job LOST when no scheduler query knows its id for S seconds (default max(60, 3 x poll))")
    parser.add_argument("--no-live", dest="live", action="store_false", help="no live table; only state changes and the end")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    exp_dir = find_experiment_dir(args.exp_dir, settings)
    # jobs already recorded keep the executor they were submitted with, unless a flag says otherwise
    executor = args.executor or RunStateFile.load(exp_dir).executor or settings.executor
    for flag, value in (("--retry-oom", args.retry_oom), ("--retry-node-fail", args.retry_node_fail)):
        if value is not None and value < 0:
            raise CkError(flag, value, "must be >= 0", f"e.g. {flag} 1")
    poll = args.poll if args.poll is not None else DEFAULT_POLL
    if poll <= 0:
        raise CkError("--poll", poll, "must be > 0 seconds", "e.g. --poll 15")
    states = run_experiment(exp_dir, executor=executor, max_submit=args.max_submit, stagger=args.stagger,
                            poll=poll, detach=args.detach, resume=args.resume, live=args.live,
                            retry_oom=args.retry_oom, retry_node_fail=args.retry_node_fail, lost_after=args.lost_after, max_local_jobs=settings.max_local_jobs,
                            rerun=args.rerun, command=getattr(args, "command_line", None), array=args.array,
                            array_throttle=args.array_throttle)
    # with --detach only runs that already ended badly count; otherwise every run must have COMPLETED
    failed = {run: state for run, state in states.items()
              if state != "COMPLETED" and (is_terminal(state) or not args.detach)}
    if failed:
        print("not completed: " + ", ".join(f"{run}={state}" for run, state in failed.items()))
        return 1
    return 0

