"""`ck config`: show where settings come from, set or unset one, print the settings file's path."""

from __future__ import annotations

import argparse

from cruijff_kit import settings as ck_settings

KEY_HELP = "\n".join(f"  {key:<17} {spec.help}" for key, spec in ck_settings.KEYS.items())


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Show or change cruijff_kit settings. Each value resolves as: command-line flag > environment "
        "variable CK_<KEY> (e.g. CK_SCRATCH) > settings file > default. The settings file is $CK_CONFIG, "
        "else ~/.config/cruijff_kit/settings.yaml."
    )
    parser.epilog = "keys:\n" + KEY_HELP + (
        "\n\nexamples:\n  ck config show\n  ck config set scratch /scratch/gpfs/$USER\n"
        "  ck config set slurm_account msalganik\n  ck config set modules anaconda3/2024.6,cudatoolkit/12.4\n"
        "  ck config unset slurm_account\n  ck config path"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("show", help="print every setting, its value and where it came from (the default action)")
    p_set = sub.add_parser("set", help="validate and store KEY VALUE in the settings file")
    p_set.add_argument("key", metavar="KEY")
    p_set.add_argument("value", metavar="VALUE", help="use '' to store an empty value (unset optional keys)")
    p_unset = sub.add_parser("unset", help="remove KEY from the settings file (back to env/default)")
    p_unset.add_argument("key", metavar="KEY")
    sub.add_parser("path", help="print the settings file's path")


def run(args: argparse.Namespace) -> int:
    action = args.action or "show"
    if action == "path":
        print(ck_settings.settings_path())
        return 0
    if action == "set":
        key, value, path = ck_settings.set_setting(args.key, args.value)
        print(f"{key} = {ck_settings.format_value(value)}  (written to {path})")
        shadow = ck_settings.load_settings()
        if shadow.source(key) != "file":
            print(f"note: {ck_settings.env_var(key)} is set in the environment and takes precedence")
        return 0
    if action == "unset":
        removed = ck_settings.unset_setting(args.key)
        print(f"{args.key}: {'removed from' if removed else 'was not in'} {ck_settings.settings_path()}")
        return 0
    resolved = ck_settings.load_settings()
    print(f"# settings file: {resolved.path}{'' if resolved.path.exists() else ' (absent)'}")
    width = max(len(k) for k in ck_settings.KEYS)
    for key in ck_settings.KEYS:
        source = resolved.source(key)
        where = f"env {ck_settings.env_var(key)}" if source == "env" else source
        print(f"{key:<{width}}  {ck_settings.format_value(getattr(resolved, key)):<40}  [{where}]")
    return 0
