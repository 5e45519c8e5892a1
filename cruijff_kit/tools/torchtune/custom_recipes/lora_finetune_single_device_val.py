"""LoRA fine-tuning on one device, with periodic validation and answer-token metrics.

Built on torchtune 0.6.1's own `LoRAFinetuneRecipeSingleDevice` (loaded from torchtune's recipe file,
subclassed, not copied; its training loop runs unchanged). Validation, the answer-token metrics and
metrics.jsonl come from validation.py, shared with lora_finetune_distributed_val; what we take from
torchtune is listed in torchtune_layer.py. Run it like any torchtune recipe:

    tune run cruijff_kit/tools/torchtune/custom_recipes/lora_finetune_single_device_val.py --config finetune.yaml
    python -m cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val --config finetune.yaml

plus torchtune's key=value overrides. `tune run` turns a custom recipe's file path into a dotted module name,
so the path must be relative to the working directory (an absolute path fails inside torchtune; so does a dotted
name, whose last part it takes for a file extension); `python -m` with the dotted name works from anywhere.

What it adds to the stock recipe (config keys: docs/finetune_reference.yaml, "cruijff_kit recipe additions"):

- Validation on `dataset_val` every `run_val_every_n_steps` optimizer steps (once per such step, whatever
  `gradient_accumulation_steps`) and once at the end of training; batches of `batch_size_val` in file order,
  at most `max_val_batches`; `run_val_every_n_steps: 0` turns validation off. When the last step is also a
  periodic validation step, the final validation stands for both.
- Metrics, to the config's `metric_logger` (W&B, offline) and to `metrics_log` (JSON lines, flushed as written):

  event "train", every `log_every_n_steps` optimizer steps:
    loss                       torchtune's loss of the last optimizer step: mean cross-entropy (nats) over all
                               label tokens (with train_on_input: the input and chat template tokens too)
    lr                         optimizer learning rate after the last step's scheduler update (torchtune's lr)
    tokens_per_second_per_gpu  label tokens per second of the last optimizer step (torchtune's measure; a step
                               right after a validation includes the validation's time)
    train_answer_loss          cross-entropy (nats) at the answer token (the first token of the assistant's
                               reply: the label), mean over the training rows since the previous train log.
                               The answer token is the one after the last assistant header, as the model
                               tokenizer emits it (answer_metrics.py), so it is found for any tokenizer and
                               whether or not train_on_input masks the prompt
    train_answer_acc           share of those rows whose argmax at the answer position is the answer token
  event "val":
    val_loss                   mean cross-entropy over the same token set as `loss`, over the validation set
    val_answer_loss            as train_answer_loss, over the validation set
    val_answer_acc             as train_answer_acc, over the validation set
    val_examples               validation rows evaluated
    final                      true for the end-of-training validation
  event "end": steps, wall_time.
  Every line also has event, step (optimizer steps done), epoch, wall_time (s since training start), time (unix).

- logs/val_predictions.jsonl at the final validation: index, input, target, predicted, answer_loss per row.
- `epochs_to_save`: list of epochs (0-based), "all", or null (= every epoch); the last epoch is always saved.
  A run killed mid-way resumes from its last saved epoch with `resume_from_checkpoint: True`; a checkpoint
  the job was killed while writing is refused with a one-line error that says what to delete.
- `num_threads` (default 1): torch CPU threads; more than one thread collapses on a loaded small machine.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig
from torchtune import config

from cruijff_kit.tools.torchtune.custom_recipes.torchtune_layer import load_stock_recipe
from cruijff_kit.tools.torchtune.custom_recipes.validation import (  # noqa: F401  (public names of this recipe)
    COMMON_STOCK_KEYS,
    VAL_KEYS,
    ValidatingRecipe,
    check_config,
    exit_code_of,
    check_resume_checkpoint,
    parse_epochs_to_save,
    quiet_offline_wandb,
    set_cpu_threads,
)

stock = load_stock_recipe("lora_finetune_single_device.py")

# Top-level finetune.yaml keys this recipe understands: the stock recipe's and ours (VAL_KEYS). Anything else
# is an error: a misspelt key silently ignored would run a different experiment than the one written.
STOCK_KEYS = COMMON_STOCK_KEYS | {"low_cpu_ram"}


class LoRAFinetuneRecipeSingleDeviceVal(ValidatingRecipe, stock.LoRAFinetuneRecipeSingleDevice):
    """torchtune's single-device LoRA recipe plus validation, answer-token metrics and metrics.jsonl."""

    STOCK_KEYS = STOCK_KEYS


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point: `--config finetune.yaml` plus torchtune's key=value overrides."""
    set_cpu_threads(cfg)
    config.log_config(recipe_name="LoRAFinetuneRecipeSingleDeviceVal", cfg=cfg)
    recipe = LoRAFinetuneRecipeSingleDeviceVal(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(exit_code_of(recipe_main))
