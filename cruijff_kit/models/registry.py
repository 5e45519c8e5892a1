"""What the config renderer needs to know about each supported model.

The embedded tiny model and Llama-3.2-1B-Instruct go through the same torchtune checkpointer,
tokenizer and recipe; only these fields differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from cruijff_kit.errors import CkError


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
    ),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise CkError("model", name, "unknown model", f"use one of {', '.join(MODELS)}") from None
