"""`ck keys`: the reference of every setup_finetune.yaml key, printed from the run contract (RunConfig)."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Every key of a run's setup_finetune.yaml (each is also a --KEY VALUE flag of "
                          "`python -m cruijff_kit.tools.torchtune.setup_finetune`): type, default, bounds, help, "
                          "group and legacy aliases, from cruijff_kit/run_config.py.")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="print a JSON list, one object per key")
    how.add_argument("--markdown", action="store_true",
                     help="print the markdown reference (.claude/skills/scaffold-experiment/setup_finetune_keys.md)")


def run(args: argparse.Namespace) -> int:
    from cruijff_kit.run_config import key_reference, keys_markdown

    if args.json:
        print(json.dumps(key_reference(), indent=1))
    elif args.markdown:
        print(keys_markdown(), end="")
    else:
        for entry in key_reference():
            limits = ", ".join(f"{s} {v}" for s, v in entry["bounds"].items())
            aliases = f"; alias {', '.join(entry['aliases'])}" if entry["aliases"] else ""
            print(f"{entry['name']} ({entry['type']}{'; ' + limits if limits else ''}{aliases}) "
                  f"[{entry['group']}]\n    default: {entry['default']}\n    {entry['help']}")
    return 0
