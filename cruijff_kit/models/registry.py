"""What the config renderer needs to know about each supported model.

The embedded tiny model and Llama-3.2-1B-Instruct go through the same torchtune checkpointer,
tokenizer and recipe; only these fields differ.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cruijff_kit.errors import CkError

# The config.json fields a Hugging Face Llama checkpoint must agree on with the torchtune builder the
# renderer names: torchtune builds the model from the builder alone, reads only the head counts and
# hidden size from config.json (to permute q/k), and loads every weight by name into that model.
ARCHITECTURE_FIELDS = (
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
    "intermediate_size", "vocab_size", "tie_word_embeddings", "rope_theta", "rms_norm_eps",
)

# torchtune.models.llama3_2.llama3_2_1b (torchtune 0.6.1); tests/test_models_verify.py builds the
# registry's builders on the meta device and checks these numbers against them.
LLAMA_3_2_1B_ARCHITECTURE = {
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 2048,
    "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128_256, "tie_word_embeddings": True,
    "rope_theta": 500_000.0, "rms_norm_eps": 1e-5,
}


def _tiny_architecture() -> dict[str, Any]:
    from cruijff_kit.models.tiny import hf_config

    config = hf_config()
    return {name: config[name] for name in ARCHITECTURE_FIELDS}


@dataclass(frozen=True)
class ModelSpec:
    name: str                    # directory name under models_dir
    lora_builder: str            # torchtune `_component_` of the LoRA model
    tokenizer_component: str
    tokenizer_file: str          # relative to the model directory
    special_tokens_file: str | None
    checkpoint_files: tuple[str, ...]
    model_type: str              # torchtune checkpointer model_type
    embedded: bool               # built locally by `ck models tiny`, no download
    device: str                  # default device
    dtype: str                   # default dtype
    max_seq_len: int | None = None
    architecture: Mapping[str, Any] = field(default_factory=dict)  # ARCHITECTURE_FIELDS of config.json


EMBEDDED_MODEL = "ck-tiny-llama"

MODELS: dict[str, ModelSpec] = {
    "Llama-3.2-1B-Instruct": ModelSpec(
        name="Llama-3.2-1B-Instruct",
        lora_builder="torchtune.models.llama3_2.lora_llama3_2_1b",
        tokenizer_component="torchtune.models.llama3.llama3_tokenizer",
        tokenizer_file="original/tokenizer.model",
        special_tokens_file=None,
        checkpoint_files=("model.safetensors",),
        model_type="LLAMA3_2",
        embedded=False,
        device="cuda",
        dtype="bf16",
        architecture=LLAMA_3_2_1B_ARCHITECTURE,
    ),
    EMBEDDED_MODEL: ModelSpec(
        name=EMBEDDED_MODEL,
        lora_builder="cruijff_kit.models.tiny.lora_tiny_llama",
        tokenizer_component="torchtune.models.llama3.llama3_tokenizer",
        tokenizer_file="original/tokenizer.model",
        special_tokens_file="original/special_tokens.json",
        checkpoint_files=("model.safetensors",),
        model_type="LLAMA3_2",
        embedded=True,
        device="cpu",
        dtype="fp32",
        max_seq_len=64,
        architecture=_tiny_architecture(),
    ),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise CkError("model", name, "unknown model", f"use one of {', '.join(MODELS)}") from None


def resolve_model(model: str) -> ModelSpec:
    """The spec for a registry name, or for a model directory given by its absolute path: the entry named
    like the folder, else the one whose architecture its config.json has (a downloaded model can live
    anywhere, under any name)."""
    if not os.path.isabs(model):
        return get_model(model)
    model_dir = Path(model)
    if model_dir.name in MODELS:
        return MODELS[model_dir.name]
    from cruijff_kit.models.verify import match_spec

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise CkError("model", model, "has no readable config.json, and its folder name is no registry model",
                      f"give a Hugging Face model directory, or name its folder after one of {', '.join(MODELS)}") from None
    spec = match_spec(model_dir, config) if isinstance(config, dict) else None
    if spec is None:
        raise CkError("model", model, "its config.json matches no supported architecture",
                      f"use a model of one of these architectures: {', '.join(MODELS)} (`ck models verify DIR` says what differs)")
    return spec


def model_dir_for(model: str, models_dir: str | os.PathLike) -> Path:
    """Where a run's model lives: the absolute path as given, else <models_dir>/<name>."""
    return Path(model) if os.path.isabs(model) else Path(models_dir) / model
