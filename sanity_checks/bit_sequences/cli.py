"""The generator's command line: `ck generate bit-sequences` and `python generate.py` (the seed's script).

The flags are the seed generator's. Values are parsed by generator.py so that every bad value is
one CkError line (exit 2).
"""

from __future__ import annotations

import argparse

from sanity_checks.bit_sequences.generator import MAX_BIT_LENGTH, GenerationResult, write_dataset


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
    result = write_dataset(
        args.bit_length, args.N, args.val_size, args.bit_parity, p=args.p, seed=args.seed,
        output=args.output, output_dir=args.output_dir,
    )
    print(report(result))
    return 0
