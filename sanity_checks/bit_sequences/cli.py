"""The generator's command line: `ck generate bit-sequences` and `python generate.py` (the seed's script).

The flags are the seed generator's. Values are parsed by generator.py so that every bad value is
one CkError line (exit 2).
"""

from __future__ import annotations

import argparse

import sys
from pathlib import Path

from cruijff_kit.errors import CkError
from cruijff_kit.paths import default_data_dir
from sanity_checks.bit_sequences.generator import (MAX_BIT_LENGTH, GenerationResult, check_output_dir,
                                                   provenance_matches, read_provenance, validate_arguments,
                                                   validate_output_name, write_dataset)


def _recorded_arguments(path: Path) -> object:
    try:
        return read_provenance(path).get("arguments", "unknown arguments")
    except CkError:
        return "unknown arguments (no readable provenance record)"


def runs_reading(path: Path) -> list[Path]:
    """Run directories under the scratch's experiments whose setup_finetune.yaml reads `path`, in
    experiments not summarized yet (no summary.json)."""
    from cruijff_kit.inputs import load_yaml_mapping
    from cruijff_kit.settings import load_settings

    try:
        scratch = Path(load_settings().scratch)
    except CkError:
        return []
    target = path.resolve()
    users = []
    for setup in sorted(scratch.glob("ck-*/*/*/setup_finetune.yaml")):
        if (setup.parent.parent / "summary.json").exists():
            continue
        try:
            data = load_yaml_mapping(setup, "setup_finetune.yaml")
        except CkError:
            continue
        label, base = data.get("dataset_label"), data.get("input_dir_base")
        if isinstance(label, str) and isinstance(base, str):
            if (Path(base) / f"{label}{data.get('dataset_ext') or '.json'}").resolve() == target:
                users.append(setup.parent)
    return users


def add_bit_sequence_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bit_length", metavar="INT",
                        help=f"length of each bit string, 1..{MAX_BIT_LENGTH} (required, e.g. 15)")
    parser.add_argument("--N", metavar="INT",
                        help="total number of rows drawn, before the split (required, e.g. 33000)")
    parser.add_argument("--val_size", metavar="INT", help="validation rows, 0 < val_size < N (required, e.g. 4000)")
    parser.add_argument("--bit_parity", metavar="BOOL",
                        help="True: label = parity of the ones (flipped with probability p); "
                             "False: label = 1 with probability p (required; any case, also t/f/1/0)")
    parser.add_argument("--p", metavar="FLOAT", default="0",
                        help="label-noise rate (parity) or Bernoulli probability, in [0, 1] (default 0)")
    parser.add_argument("--seed", metavar="INT", default="42", help="numpy RandomState seed (default 42)")
    parser.add_argument("--output", metavar="FILE", help="output file name, e.g. parity.json (required)")
    parser.add_argument("--force", action="store_true",
                        help="replace a different dataset that a scaffolded run of an unfinished experiment reads")
    parser.add_argument("--output_dir", metavar="DIR", default=None,
                        help="directory for the file (default: data/green/bit_sequences/ in the checkout, "
                             "else the current directory)")


def report(result: GenerationResult) -> str:
    c = result.counts

    def share_of_ones(ones: int, rows: int) -> str:
        return f"{100.0 * ones / rows:.1f}%" if rows else "n/a"

    return "\n".join([
        f"wrote {result.path} ({result.bytes_written / 1e6:.1f} MB)",
        f"  train:      {c['train']} rows, {c['train_distinct']} distinct strings "
        f"({c['removed_by_dedup']} rows removed because their string occurs in validation)",
        f"  validation: {c['validation']} rows, {c['validation_distinct']} distinct strings",
        f"  label balance (share of \"1\"): train {share_of_ones(c['train_label_ones'], c['train'])}, "
        f"validation {share_of_ones(c['validation_label_ones'], c['validation'])}",
        f"  provenance: {result.provenance_path} (sha256 {result.sha256[:16]}...)",
    ])


def run(args: argparse.Namespace) -> int:
    """Write the dataset; the same file again is a no-op, a different one is replaced with a note, and one
    that a scaffolded run of an unfinished experiment reads only with --force."""
    wanted = validate_arguments(args.bit_length, args.N, args.val_size, args.bit_parity, args.p, args.seed)
    output = validate_output_name(args.output)
    path = check_output_dir(default_data_dir() if args.output_dir is None else args.output_dir) / output
    if path.is_file():
        if provenance_matches(path, wanted.as_dict()):
            print(f"unchanged {path}: it already holds the data of these arguments (provenance matches)")
            return 0
        users = runs_reading(path)
        if users and not getattr(args, "force", False):
            raise CkError("--output", output, f"{path} holds other data that {len(users)} scaffolded run(s) of an "
                          f"unfinished experiment read (e.g. {users[0]})",
                          "choose another --output, or pass --force to replace it")
        print(f"replacing {path}: was {_recorded_arguments(path)}, now {wanted.as_dict()}", file=sys.stderr)
    result = write_dataset(
        args.bit_length, args.N, args.val_size, args.bit_parity, p=args.p, seed=args.seed,
        output=args.output, output_dir=args.output_dir,
    )
    print(report(result))
    return 0
