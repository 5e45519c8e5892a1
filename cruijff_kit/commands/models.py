"""`ck models tiny`: build the embedded tiny Llama (no download, a few seconds on a CPU)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _default_models_dir() -> Path:
    """The `models_dir` setting (flags > CK_* env > settings file > default)."""
    from cruijff_kit.settings import load_settings

    return Path(load_settings().models_dir)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    tiny = sub.add_parser(
        "tiny",
        help="write <models-dir>/ck-tiny-llama/ (HF layout: config.json, model.safetensors, original/tokenizer.model)",
        description="Build the embedded tiny Llama 3.2 (2 layers, d=128, byte-level tokenizer) in the layout of a "
        "Hugging Face model directory, loadable by torchtune's FullModelHFCheckpointer and llama3_tokenizer.",
    )
    tiny.add_argument("--models-dir", type=Path, default=None,
                      help="directory that holds the models (default: the models_dir setting, see `ck config`)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random base weights (default 0)")
    tiny.add_argument("--force", action="store_true", help="rebuild even if the model directory exists")


def run(args: argparse.Namespace) -> int:
    from cruijff_kit.models.tiny import MODEL_NAME, build_tiny_model

    models_dir = args.models_dir if args.models_dir is not None else _default_models_dir()
    target = Path(models_dir).expanduser().resolve() / MODEL_NAME
    existed = (target / "model.safetensors").is_file()
    path = build_tiny_model(models_dir, seed=args.seed, force=args.force)
    if existed and not args.force:
        print(f"{path}: already built (use --force to rebuild)")
    else:
        print(f"{path}: built (seed {args.seed})")
    return 0
