"""`ck generate CHECK`: write a check's dataset (only checks that offer a generator command).

The flags are the check's own (`Check.configure_generate`); `-` and `_` in its name are both accepted.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from cruijff_kit.checks import Check, registered

    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for check in registered().values():
        if type(check).configure_generate is Check.configure_generate:
            continue  # the check offers no generator command
        dashed = check.name.replace("_", "-")
        sub = datasets.add_parser(dashed, aliases=[check.name] if dashed != check.name else [],
                                  allow_abbrev=False, help=check.title or f"the {check.name} check's data")
        check.configure_generate(sub)
        sub.set_defaults(check=check.name)


def run(args: argparse.Namespace) -> int:
    from cruijff_kit.checks import get_check

    return get_check(args.check).run_generate(args)
