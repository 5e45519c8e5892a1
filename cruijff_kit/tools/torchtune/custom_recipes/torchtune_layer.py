"""Everything cruijff_kit's recipes take from torchtune 0.6.1, in one place.

torchtune stopped active development in July 2025 (0.6.1 is its last release). Our recipes subclass its
stock LoRA recipes and keep their training loops; what else they need from torchtune goes through this
module, so moving to another trainer touches this layer and the two recipe classes, not the kit.

Public torchtune API used elsewhere in custom_recipes/: `torchtune.config` (parse, instantiate,
log_config), `torchtune.utils` (get_logger, batch_to_device), `torchtune.training` constants
(EPOCHS_KEY) and `torchtune.data.Message`.

TORCHTUNE_PRIVATE below lists every private (underscore) torchtune name we still touch, and why. The
recipe attributes in it are the stock recipe object's own state: a subclass reads them because the stock
recipe exposes no accessors.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torchtune
from torchtune import training as _tt_training
from torchtune.config._utils import _get_component_from_path
from torchtune.training.checkpointing._utils import RECIPE_STATE_DIRNAME
from tqdm import tqdm

TORCHTUNE_PRIVATE = {
    # torchtune modules and functions
    "recipes/lora_finetune_single_device.py, recipes/lora_finetune_distributed.py":
        "the stock recipes are files in site-packages/recipes/, not an importable package: loaded by path",
    "torchtune.config._utils._get_component_from_path":
        "resolves the collate function's dotted name for the validation loader, as the stock _setup_data does",
    "torchtune.training.checkpointing._utils.RECIPE_STATE_DIRNAME":
        "where the checkpointer writes recipe_state.pt, checked before a resume",
    "tokenizer._tokenize_header":
        "the exact ids of the assistant header, to find the answer token for any model tokenizer",
    "SFTDataset._data":
        "the raw rows of the validation set, for the input column of val_predictions.jsonl",
    # stock recipe state read or replaced by our subclasses (validation.ValidatingRecipe)
    "recipe._model, _tokenizer, _device":
        "validation and the answer-token hook run the same model and tokenizer on the same device",
    "recipe._loss_fn":
        "validation uses the same loss; replaced by one full-logits cross-entropy when the logits are small",
    "recipe._optimizer":
        "zero_grad at the end of an epoch (leftover micro-batches); its state is saved by the stock code",
    "recipe._metric_logger":
        "wrapped, so the stock loop's train row gets our answer-token metrics before it is logged",
    "recipe._setup_profiler":
        "overridden to wrap the profiler: its step() after each batch is where the stock loop calls us",
    "recipe._setup_lr_scheduler, _lr_scheduler, _steps_per_epoch":
        "on resume, the single-device stock recipe restarts the step count and LR schedule at 0: we fix both",
    "recipe._log_every_n_steps, _resume_from_checkpoint":
        "the train log cadence, and whether to check the checkpoint before a resume",
    # (tests and benches also read recipe._dataloader)
    # names the stock recipe module looks up in its own globals, replaced in our loaded copy only
    "<stock module>.training":
        "a shim over torchtune.training (StockTraining below): one fused grad scaling, and the CPU-safe "
        "memory stats and cleanup the distributed recipe needs to run with gloo",
    "<stock module>.tqdm":
        "a progress bar that redraws at most every 0.5 s instead of at every step (set_description)",
}


class QuietProgress(tqdm):
    """tqdm whose set_description does not force a redraw: the stock loops call it after every step."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mininterval", 0.5)
        super().__init__(*args, **kwargs)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=refresh)


class StockTraining(types.ModuleType):
    """torchtune.training as the stock recipe module sees it, with three functions replaced.

    - scale_grads: one fused multiply over the trainable parameters' gradients (the stock function walks
      every parameter of the model in Python at every step; on a small model that is several % of a step).
    - get_memory_stats / log_memory_stats: nothing on CPU (the stock function raises there).
    - cleanup_before_training: skips the device cache calls a CPU build does not have.
    """

    def __init__(self):
        super().__init__("cruijff_kit_stock_training")
        self._trainable: dict[int, list[torch.nn.Parameter]] = {}

    def __getattr__(self, name):
        return getattr(_tt_training, name)

    def scale_grads(self, model: torch.nn.Module, scaler: torch.Tensor) -> None:
        params = self._trainable.get(id(model))
        if params is None:
            params = self._trainable[id(model)] = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        if any(type(g) is not torch.Tensor for g in grads):  # DTensor (FSDP): the stock per-tensor path
            _tt_training.scale_grads(model, scaler)
            return
        torch._foreach_mul_(grads, scaler.to(grads[0].device))

    @staticmethod
    def get_memory_stats(device: torch.device, reset_stats: bool = True) -> dict:
        if torch.device(device).type == "cpu":
            return {}
        return _tt_training.get_memory_stats(device=device, reset_stats=reset_stats)

    @staticmethod
    def log_memory_stats(stats: dict, *args, **kwargs) -> None:
        if stats:
            _tt_training.log_memory_stats(stats, *args, **kwargs)

    @staticmethod
    def cleanup_before_training() -> None:
        from torchtune.utils import get_torch_device_namespace

        namespace = get_torch_device_namespace()
        if hasattr(namespace, "empty_cache") and hasattr(namespace, "reset_peak_memory_stats"):
            _tt_training.cleanup_before_training()
        else:
            gc.collect()


def load_stock_recipe(filename: str, adapted: bool = True) -> types.ModuleType:
    """A stock recipe module from site-packages/recipes/, as a private copy.

    adapted: its `training` and `tqdm` globals replaced (StockTraining, QuietProgress); False gives the
    recipe exactly as torchtune ships it (the benchmark's baseline).
    """
    name = ("_cruijff_kit_stock_" if adapted else "_cruijff_kit_pristine_") + Path(filename).stem
    if name in sys.modules:
        return sys.modules[name]
    path = Path(torchtune.__file__).resolve().parent.parent / "recipes" / filename
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if adapted:
        module.training = StockTraining()
        module.tqdm = QuietProgress
    return module


def collate_function(dotted_name: str):
    return _get_component_from_path(dotted_name)


def recipe_state_file() -> Path:
    """recipe_state.pt's path relative to output_dir."""
    return Path(RECIPE_STATE_DIRNAME) / "recipe_state.pt"


def assistant_header_ids(tokenizer) -> list[int]:
    """Token ids that open an assistant message, as the tokenizer emits them."""
    from torchtune.data import Message

    header = tokenizer._tokenize_header(Message(role="assistant", content=""))
    if not header:
        raise ValueError(f"{type(tokenizer).__name__} emits no assistant header; cannot locate the answer token")
    return list(header)


def raw_rows(dataset):
    """The untokenized rows of a torchtune SFT dataset (a Hugging Face dataset)."""
    return dataset._data
