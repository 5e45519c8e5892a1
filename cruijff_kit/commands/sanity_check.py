"""`ck sanity-check CHECK`: design -> scaffold -> run -> summarize in one command, for any registered check."""

from __future__ import annotations

import argparse

from cruijff_kit.settings import EXECUTORS


def configure(parser: argparse.ArgumentParser) -> None:
    from cruijff_kit.checks import registered

    checks = registered()
    parser.description = (
        "Run a sanity check end to end: design the experiment, scaffold its run directories (generating "
        "the datasets and, for the embedded model, the tiny model), run every job until it ends, then "
        "summarize: numbers, plots and a PASS/FAIL/INCONCLUSIVE verdict per run. Exit status 0 only when "
        "every run is PASS."
    )
    presets = sorted({p for c in checks.values() for p in c.presets})
    parser.epilog = (
        "The preset defaults to the check's default (embedded: tiny built-in model, CPU, about a minute) unless "
        "the executor is slurm and the model of the check's cluster preset is under models_dir. Each call makes "
        "a fresh experiment dir <scratch>/ck-sanity-checks/sanity_check_<check>_YYYY-MM-DD[_2, _3, ...] unless "
        f"--name is given. Registered checks: {', '.join(checks) or '(none)'}. "
        "Example: ck sanity-check CHECK --scratch /tmp/ck"
    )
    names = [n for c in checks for n in dict.fromkeys((c, c.replace("_", "-")))]
    parser.add_argument("check", metavar="CHECK", choices=names,
                        help=f"which sanity check: {', '.join(checks)} (- and _ both accepted)")
    parser.add_argument("--preset", choices=presets, default=None,
                        help=f"one of the check's presets ({', '.join(presets)}); default: see below")
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="local (subprocesses) or slurm (sbatch); default: the executor setting (local)")
    parser.add_argument("--scratch", metavar="DIR", default=None,
                        help="scratch root for ck-sanity-checks/ and ck-outputs/ (default: the scratch setting, ./ck-scratch)")
    parser.add_argument("--sweep", action="store_true",
                        help="the check's sweep mode (its sweep_overrides; for bit-sequences three bit lengths x two "
                             "seeds on the embedded model), judged by the experiment-level verdicts too")
    parser.add_argument("--name", metavar="NAME", default=None,
                        help="experiment name, used as given (fails if it exists); default: a fresh dated name")


def run(args: argparse.Namespace) -> int:
    from cruijff_kit.sanity_check import run_sanity_check

    return run_sanity_check(args.check, executor=args.executor, preset=args.preset, scratch=args.scratch,
                            exp_name=args.name, sweep=args.sweep)
