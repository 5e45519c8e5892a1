"""The embedded tiny Llama: a model small enough to fine-tune on a laptop CPU in seconds.

`build_tiny_model(models_dir)` writes `<models_dir>/ck-tiny-llama/` in the layout of a Hugging
Face model directory, so the same torchtune code that loads Llama-3.2-1B-Instruct loads it:

    config.json                   HF LlamaConfig keys (read by FullModelHFCheckpointer)
    model.safetensors             HF parameter names (torchtune -> HF via convert_weights.tune_to_hf)
    original/tokenizer.model      tiktoken BPE file: "<base64 token> <rank>" per line
    original/special_tokens.json  HF tokenizer.json-style {"added_tokens": [...]}, the Llama-3
                                  special tokens at small ids (llama3_tokenizer(special_tokens_path=...))

The tokenizer has one token per byte plus, as Llama-3's has, single tokens for the chat roles and
"\\n\\n"; digits never merge, so every bit of a bit string is its own token, and the Llama-3 chat
format ("<|start_header_id|>user<|end_header_id|>\\n\\n...") tokenizes as it does for Llama-3.
The architecture is Llama 3.2 (torchtune's `llama3_2` component builders) with small
dimensions, `TINY_DIMS` below being the single source of truth for both the files written here and
`lora_tiny_llama`, the model `_component_` of finetune.yaml.

The base weights are random (normal, std `INIT_STD` = 0.3, see there), deterministic from a seed,
except the key projections, which are zero (`ZERO_INIT`: uniform causal attention, so the built-in check's
label rule, the count of ones mod 2, is learned as a function of the count of ones).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

MODEL_NAME = "ck-tiny-llama"

# Llama-3 special tokens, in Llama-3's own order, placed right after the 256 byte tokens.
# llama3_tokenizer requires begin/end_of_text, finetune_right_pad_id, step_id, start/end_header_id,
# eom_id, eot_id, python_tag and image; the rest keep the familiar layout.
SPECIAL_TOKEN_NAMES = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
    "<|video|>",
)
NUM_BYTE_TOKENS = 256
# As in Llama-3's vocabulary, the chat roles and the header's "\n\n" are single tokens, so the assistant
# header is 4 tokens long (<|start_header_id|> assistant <|end_header_id|> \n\n), not 13: with
# train_on_input False every header token is a label, and 13 of them drown the answer's gradient.
# A BPE merge needs every prefix of the word in the vocabulary, hence the prefix chains.
WORD_TOKENS = ("\n\n", "user", "assistant", "system", "ipython")


def _merge_tokens() -> list[bytes]:
    merges: list[bytes] = []
    for word in WORD_TOKENS:
        raw = word.encode()
        for end in range(2, len(raw) + 1):
            if raw[:end] not in merges:
                merges.append(raw[:end])
    return merges


MERGE_TOKENS = _merge_tokens()
NUM_BASE_TOKENS = NUM_BYTE_TOKENS + len(MERGE_TOKENS)
SPECIAL_TOKENS = {name: NUM_BASE_TOKENS + i for i, name in enumerate(SPECIAL_TOKEN_NAMES)}

TINY_DIMS = {
    "vocab_size": 320,  # 256 bytes + 27 role/"\n\n" merges + 13 special tokens, rounded up to a multiple of 16
    "num_layers": 2,
    "num_heads": 8,
    "num_kv_heads": 8,
    "embed_dim": 128,
    "intermediate_dim": 512,
    "max_seq_len": 256,
    "rope_base": 500_000,
    "norm_eps": 1e-5,
    "scale_factor": 32,
}
# The initialisation is chosen so the sanity check is learnable. With rank-8 LoRA at lr 3e-3 (the embedded
# preset), the built-in check's 8-bit mod-2 rule behind the chat template (train_on_input False) generalised to every held-out string
# by step 250-550 at std 0.3, for 10 of 10 (training seed, data seed) pairs on base seed 0 and for base seeds
# 1-4 (0.5 learned as well); at std 0.1 it stayed at chance (535 steps at lr 3e-3, 1070 at 1e-2), and
# Llama's own 0.02 never learned it. A larger std gives the frozen MLPs sharper random features of the count
# of ones, from which the LoRA updates assemble the rule.
INIT_STD = 0.3
# Zero key projections make every attention score 0: each position attends uniformly to its prefix, so
# the model sees the input bits as a bag of tokens and the only thing it can learn about a bit string is
# its count of ones. The mod-2 rule then generalises to held-out strings whose count occurs in training (the
# check's criterion) instead of being memorised string by string, which is what a random attention
# pattern led to in our measurements. LoRA is not applied to k_proj, so this holds during fine-tuning.
ZERO_INIT = ("attn.k_proj.weight",)

assert TINY_DIMS["vocab_size"] >= NUM_BASE_TOKENS + len(SPECIAL_TOKENS)


def tiny_llama():
    """The base (no LoRA) tiny Llama 3.2 as a torchtune TransformerDecoder."""
    from torchtune.models.llama3_2._component_builders import llama3_2

    return llama3_2(**TINY_DIMS, tie_word_embeddings=True)


def lora_tiny_llama(
    lora_attn_modules,
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
):
    """The tiny Llama 3.2 with LoRA adapters: the `model._component_` of finetune.yaml.

    Same arguments as torchtune's `lora_llama3_2_1b`; the dimensions come from `TINY_DIMS`.
    """
    from torchtune.models.llama3_2._component_builders import lora_llama3_2

    return lora_llama3_2(
        lora_attn_modules=list(lora_attn_modules),
        apply_lora_to_mlp=apply_lora_to_mlp,
        apply_lora_to_output=apply_lora_to_output,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        use_dora=use_dora,
        quantize_base=quantize_base,
        tie_word_embeddings=True,
        **TINY_DIMS,
    )


def hf_config() -> dict:
    """config.json contents: the HF LlamaConfig keys for `TINY_DIMS`."""
    d = TINY_DIMS
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": d["embed_dim"],
        "intermediate_size": d["intermediate_dim"],
        "num_hidden_layers": d["num_layers"],
        "num_attention_heads": d["num_heads"],
        "num_key_value_heads": d["num_kv_heads"],
        "head_dim": d["embed_dim"] // d["num_heads"],
        "vocab_size": d["vocab_size"],
        "max_position_embeddings": d["max_seq_len"],
        "rms_norm_eps": d["norm_eps"],
        "rope_theta": float(d["rope_base"]),
        "rope_scaling": {
            "factor": float(d["scale_factor"]),
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": SPECIAL_TOKENS["<|begin_of_text|>"],
        "eos_token_id": [SPECIAL_TOKENS["<|end_of_text|>"], SPECIAL_TOKENS["<|eot_id|>"]],
        "initializer_range": INIT_STD,
        "torch_dtype": "float32",
    }


def tokenizer_model_text() -> str:
    """tiktoken BPE file: every single byte is a token (rank = byte value), then the role-word merges."""
    tokens = [bytes([b]) for b in range(NUM_BYTE_TOKENS)] + MERGE_TOKENS
    return "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(tokens))


def special_tokens_json() -> dict:
    """HF tokenizer.json-style special tokens, as torchtune's parse_hf_tokenizer_json reads them."""
    return {
        "added_tokens": [
            {"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for name, i in SPECIAL_TOKENS.items()
        ]
    }


def init_weights(model, seed: int) -> None:
    """Random base weights: normal(0, INIT_STD) for every matrix, ones for RMSNorm scales, and zero key
    projections (see ZERO_INIT)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
            else:
                param.fill_(1.0)
            if name.endswith(ZERO_INIT):
                param.zero_()


def forget_cached_tokenizer(tokenizer_path: str | os.PathLike) -> None:
    """Drop tiktoken's cached copy of a local tokenizer file.

    tiktoken caches every file it reads, local ones included, under a key made from the path string
    alone; a rebuilt tokenizer at the same path would otherwise be read as the old one.
    """
    import hashlib

    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return
    for candidate in {str(tokenizer_path), str(Path(tokenizer_path).resolve())}:
        try:
            os.remove(os.path.join(cache_dir, hashlib.sha1(candidate.encode()).hexdigest()))
        except OSError:
            pass


def build_tiny_model(models_dir: str | os.PathLike, *, seed: int = 0, force: bool = False) -> Path:
    """Write `<models_dir>/ck-tiny-llama/` (see the module docstring) and return its path.

    An existing directory is kept unless `force`; the new one is built in a temporary directory
    beside it and renamed into place, so a reader never sees half a model.
    """
    import torch
    from safetensors.torch import save_file
    from torchtune.models.convert_weights import tune_to_hf

    models_dir = Path(models_dir).expanduser().resolve()
    target = models_dir / MODEL_NAME
    if (target / "model.safetensors").is_file() and not force:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)

    model = tiny_llama()
    init_weights(model, seed)  # every parameter, from its own generator: the global RNG plays no part
    d = TINY_DIMS
    hf_state = tune_to_hf(
        model.state_dict(),
        num_heads=d["num_heads"],
        num_kv_heads=d["num_kv_heads"],
        dim=d["embed_dim"],
    )
    hf_state = {k: v.contiguous().to(torch.float32) for k, v in hf_state.items()}

    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.", dir=models_dir))
    try:
        (tmp / "original").mkdir()
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(), indent=2) + "\n")
        (tmp / "original" / "tokenizer.model").write_text(tokenizer_model_text())
        (tmp / "original" / "special_tokens.json").write_text(json.dumps(special_tokens_json(), indent=2) + "\n")
        (tmp / "ck_tiny_model.json").write_text(json.dumps(
            {"seed": seed, "init_std": INIT_STD, "zero_init": list(ZERO_INIT), **d}, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if target.exists():
            old = models_dir / f".{MODEL_NAME}.old.{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    forget_cached_tokenizer(target / "original" / "tokenizer.model")
    return target
