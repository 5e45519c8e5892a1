"""`ck sanity-check bit_sequences`: design -> scaffold -> run -> summarize in one command."""

from __future__ import annotations

import argparse

from cruijff_kit.presets import PRESETS
from cruijff_kit.settings import EXECUTORS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a sanity check end to end: design the experiment, scaffold its run directories (generating "
        "the datasets and, for the embedded preset, the tiny model), run every job until it ends, then "
        "summarize: numbers, plots and a PASS/FAIL/INCONCLUSIVE verdict per run. Exit status 0 only when "
        "every run is PASS."
    )
    parser.epilog = (
        "The preset defaults to `embedded` (tiny built-in model, CPU, about a minute) unless the executor is "
        "slurm and Llama-3.2-1B-Instruct is under models_dir, then `seed` (the original check). Each call makes "
        "a fresh experiment dir <scratch>/ck-sanity-checks/sanity_check_bit_sequences_YYYY-MM-DD[_2, _3, ...] "
        "unless --name is given. Example: ck sanity-check bit_sequences --scratch /tmp/ck"
    )
    parser.add_argument("check", metavar="CHECK", choices=["bit_sequences", "bit-sequences"],
                        help="which sanity check: bit_sequences")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="embedded (tiny model, CPU) or seed (Llama-3.2-1B-Instruct, GPU cluster); default: see below")
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="local (subprocesses) or slurm (sbatch); default: the executor setting (local)")
    parser.add_argument("--scratch", metavar="DIR", default=None,
                        help="scratch root for ck-sanity-checks/ and ck-outputs/ (default: the scratch setting, ./ck-scratch)")
    parser.add_argument("--name", metavar="NAME", default=None,
                        help="experiment name, used as given (fails if it exists); default: a fresh dated name")


def run(args: argparse.Namespace) -> int:
    from cruijff_kit.sanity_check import run_sanity_check

    return run_sanity_check(args.check, executor=args.executor, preset=args.preset, scratch=args.scratch,
                            exp_name=args.name)
