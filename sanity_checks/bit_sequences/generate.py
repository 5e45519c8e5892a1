"""Generate a bit-sequences dataset (Step 0 of the sanity check's README).

    cd sanity_checks/bit_sequences
    python generate.py --bit_length 15 --N 33000 --p 0 --bit_parity True --val_size 4000 --output parity.json

Same flags and data as `ck generate bit-sequences`; this file only parses the command line.
"""

import argparse
import sys
from pathlib import Path

# Run by path, this directory is sys.path[0]: put the checkout first so that the packages
# `sanity_checks` and `cruijff_kit` are the ones beside this file (also when not installed).
_CHECKOUT = Path(__file__).resolve().parents[2]
if (_CHECKOUT / "sanity_checks" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))

from cruijff_kit.errors import CkError  # noqa: E402
from sanity_checks.bit_sequences.cli import add_bit_sequence_flags, run  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="generate.py", allow_abbrev=False,
        description="Write a bit-sequences dataset ({'train', 'validation'} JSON) and its provenance record.",
    )
    add_bit_sequence_flags(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CkError as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
