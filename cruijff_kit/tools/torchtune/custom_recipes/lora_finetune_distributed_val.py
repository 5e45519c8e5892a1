"""LoRA fine-tuning on several processes (GPUs or CPU processes, one or more nodes), with validation.

Built on torchtune 0.6.1's own `LoRAFinetuneRecipeDistributed` (FSDP2; loaded from torchtune's recipe file,
subclassed, not copied; its training loop runs unchanged) the way lora_finetune_single_device_val is built on
the single-device recipe, and sharing its validation, answer-token metrics and metrics.jsonl (validation.py).
Launch one process per device with torchrun:

    torchrun --standalone --nproc_per_node 2 -m cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_distributed_val --config finetune.yaml
    tune run --nproc_per_node 2 cruijff_kit/tools/torchtune/custom_recipes/lora_finetune_distributed_val.py --config finetune.yaml
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:PORT -m ... (several nodes)

Same config keys and metrics as the single-device recipe (see its docstring), plus the stock distributed keys
(fsdp_cpu_offload, fsdp_reshard_after_forward, custom_sharded_layers). `batch_size` and `batch_size_val` are
per process: the global batch is batch_size x processes. What differs:

- Backend from the device: NCCL on CUDA (with gloo for CPU tensors, as torchtune does), gloo on CPU.
- Validation rows (the first max_val_batches x batch_size_val of dataset_val, or all) are split between the
  processes; losses, answer-token sums and counts are all_reduced, so every figure equals one process
  evaluating the same rows. Training answer-token metrics are likewise summed over the processes' rows.
- Only rank 0 writes metrics.jsonl, the metric logger (W&B), val_predictions.jsonl and checkpoints.
- On CPU, torchtune's memory statistics and device-cache cleanup are skipped (torchtune_layer.StockTraining).
"""

from __future__ import annotations

import socket
import sys

import torch.distributed as dist
from omegaconf import DictConfig
from torch.distributed import init_process_group
from torchtune import config, training, utils

from cruijff_kit.errors import CkError
from cruijff_kit.tools.torchtune.custom_recipes.torchtune_layer import load_stock_recipe
from cruijff_kit.tools.torchtune.custom_recipes.validation import (
    COMMON_STOCK_KEYS,
    ValidatingRecipe,
    exit_code_of,
    set_cpu_threads,
)

stock = load_stock_recipe("lora_finetune_distributed.py")

STOCK_KEYS = COMMON_STOCK_KEYS | {"fsdp_cpu_offload", "fsdp_reshard_after_forward", "custom_sharded_layers"}


def process_group_backend(device: str) -> str:
    """NCCL for CUDA tensors (gloo for CPU ones, as torchtune's stock recipe asks), gloo on a CPU run."""
    return "cuda:nccl,cpu:gloo" if utils.get_device(device=device).type == "cuda" else "gloo"


class LoRAFinetuneRecipeDistributedVal(ValidatingRecipe, stock.LoRAFinetuneRecipeDistributed):
    """torchtune's distributed LoRA recipe plus validation, answer-token metrics and metrics.jsonl."""

    STOCK_KEYS = STOCK_KEYS


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point, in every process torchrun starts: `--config finetune.yaml` plus key=value overrides."""
    if not training.is_distributed():
        raise CkError("launcher", "python", "the distributed recipe needs the environment torchrun sets",
                      "run it with torchrun --nproc_per_node N -m ... (or tune run --nproc_per_node N ...)")
    set_cpu_threads(cfg)
    init_process_group(process_group_backend(cfg.device))
    # one line per process, so a job's log shows where each rank ran; one write with its newline (print()
    # writes the text and the newline apart, and the ranks share one output file: lines got glued)
    sys.stdout.write(f"lora_finetune_distributed_val: rank {dist.get_rank()} of {dist.get_world_size()} on "
                     f"{socket.gethostname()}\n")
    sys.stdout.flush()
    config.log_config(recipe_name="LoRAFinetuneRecipeDistributedVal", cfg=cfg)
    recipe = LoRAFinetuneRecipeDistributedVal(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(exit_code_of(recipe_main))
