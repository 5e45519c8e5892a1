"""A random-init Llama-3.2-1B-Instruct in the Hugging Face layout, for tests and benchmarks (no download).

`write_random_llama(models_dir)` writes `<models_dir>/Llama-3.2-1B-Instruct/` as the published model
directory looks to torchtune: the real config.json, one `model.safetensors` with the real tensor names and
shapes (normal(0, 0.02) weights, unit RMSNorm scales, bf16 by default: 2.5 GB), and Meta's real Llama 3
tokenizer as `original/tokenizer.model`, taken from the `llama-models` package (a dev dependency).
The file is streamed tensor by tensor, so writing it needs about 1 GB of memory, not 5.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cruijff_kit.errors import CkError
from cruijff_kit.models.registry import MODELS, ModelSpec
from cruijff_kit.models.verify import CONFIG_FILE, TORCH_DTYPES, expected_tensor_shapes

SEED_MODEL = "Llama-3.2-1B-Instruct"
INIT_STD = 0.02  # Llama's initializer_range
CHUNK_ELEMENTS = 1 << 24  # rows generated at a time (64 MB of fp32)

# meta-llama/Llama-3.2-1B-Instruct config.json, as published
LLAMA_3_2_1B_INSTRUCT_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}

_TORCH_NAMES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def llama3_tokenizer_file() -> Path:
    """Meta's Llama 3 tokenizer.model as shipped by the `llama-models` package (found without importing it)."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise CkError("llama-models", "not installed", "the real Llama 3 tokenizer file comes from it",
                      "install the dev extras: bash scripts/bootstrap.sh (or pip install llama-models==0.3.0)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "llama3" / "tokenizer.model"
        if path.is_file():
            return path
    raise CkError("llama-models", "installed", "has no llama3/tokenizer.model", "pip install llama-models==0.3.0")


def safetensors_header(shapes: dict[str, list[int]], dtype: str) -> tuple[bytes, int]:
    """(the 8-byte length + JSON header of a safetensors file holding `shapes` in name order, the data bytes)."""
    itemsize = {"BF16": 2, "F16": 2, "F32": 4}[TORCH_DTYPES[dtype]]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(shapes):
        nbytes = math.prod(shapes[name]) * itemsize
        header[name] = {"dtype": TORCH_DTYPES[dtype], "shape": shapes[name], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob, offset


def write_safetensors_streaming(path: Path, shapes: dict[str, list[int]], dtype: str, fill) -> None:
    """Write a safetensors file tensor by tensor: `fill(name, shape, rows)` returns the fp32 values of
    rows [rows.start, rows.stop) of the tensor (all of a 1-D tensor)."""
    import torch

    torch_dtype = getattr(torch, _TORCH_NAMES[dtype])
    head, _ = safetensors_header(shapes, dtype)
    with path.open("wb") as f:
        f.write(head)
        for name in sorted(shapes):
            shape = shapes[name]
            if len(shape) == 1:
                chunks = [range(0, 1)]
            else:
                step = max(1, CHUNK_ELEMENTS // math.prod(shape[1:]))
                chunks = [range(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]
            for rows in chunks:
                values = fill(name, shape, rows).to(torch_dtype).contiguous()
                f.write(values.view(torch.uint8).numpy().tobytes())


def write_random_llama(models_dir: str | os.PathLike, *, name: str = SEED_MODEL, dtype: str = "bfloat16",
                       seed: int = 0, config: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write `<models_dir>/<name>/` (see the module docstring), staged beside it and renamed into place."""
    import torch

    spec: ModelSpec = MODELS[SEED_MODEL]
    models_dir = Path(models_dir).expanduser().resolve()
    target = models_dir / name
    if target.exists() and not force:
        return target
    config = dict(config or LLAMA_3_2_1B_INSTRUCT_CONFIG, torch_dtype=dtype)
    tokenizer = llama3_tokenizer_file()
    models_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def fill(tensor: str, shape: list[int], rows: range) -> torch.Tensor:
        if len(shape) == 1:
            return torch.ones(shape)
        return torch.randn((len(rows), *shape[1:]), generator=gen).mul_(INIT_STD)

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        (tmp / "original").mkdir()
        write_safetensors_streaming(tmp / "model.safetensors", expected_tensor_shapes(spec), dtype, fill)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        shutil.copyfile(tokenizer, tmp / "original" / "tokenizer.model")
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
