"""LoRA fine-tuning on one device, with periodic validation and answer-token metrics.

Built on torchtune 0.6.1's own `LoRAFinetuneRecipeSingleDevice` (loaded from torchtune's recipe file,
subclassed, not copied). Run it like any torchtune recipe:

    tune run cruijff_kit/tools/torchtune/custom_recipes/lora_finetune_single_device_val.py --config finetune.yaml
    tune run cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val --config finetune.yaml
    python -m cruijff_kit.tools.torchtune.custom_recipes.lora_finetune_single_device_val --config finetune.yaml

plus torchtune's key=value overrides. `tune run` turns a custom recipe's file path into a dotted module name,
so the path must be relative to the working directory (an absolute path fails inside torchtune); the dotted
name works from anywhere the package is installed.

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
    tokens_per_second_per_gpu  label tokens per second of the last optimizer step (torchtune's measure)
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

import importlib.util
import json
import math
import os
import re
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torchtune
from omegaconf import DictConfig, ListConfig
from torch.utils.data import DataLoader
from torchtune import config, training, utils
from torchtune.config._utils import _get_component_from_path
from torchtune.training.checkpointing._utils import RECIPE_STATE_DIRNAME
from tqdm import tqdm

from cruijff_kit.errors import CkError
from cruijff_kit.fsutil import atomic_write_text
from cruijff_kit.run_config import FINETUNE_TOP_LEVEL_KEYS, check_finetune_config
from cruijff_kit.tools.torchtune.custom_recipes.answer_metrics import (
    AnswerMeter,
    answer_results,
    assistant_header_ids,
)

log = utils.get_logger("INFO")


def _load_stock_recipe():
    """torchtune's lora_finetune_single_device.py, loaded by file path (its `recipes` dir is not importable)."""
    name = "_torchtune_stock_lora_finetune_single_device"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(torchtune.__file__).resolve().parent.parent / "recipes" / "lora_finetune_single_device.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_stock = _load_stock_recipe()

# Top-level finetune.yaml keys this recipe understands: the stock recipe's and ours. Anything else is
# an error: a misspelt key silently ignored would run a different experiment than the one written.
STOCK_KEYS = frozenset({
    "output_dir", "model", "tokenizer", "checkpointer", "resume_from_checkpoint", "save_adapter_weights_only",
    "dataset", "seed", "shuffle", "batch_size", "optimizer", "lr_scheduler", "loss", "epochs",
    "max_steps_per_epoch", "gradient_accumulation_steps", "clip_grad_norm", "compile", "metric_logger",
    "log_every_n_steps", "log_peak_memory_stats", "device", "dtype", "enable_activation_checkpointing",
    "enable_activation_offloading", "profiler", "collate_fn", "low_cpu_ram", "cudnn_deterministic_mode",
})
VAL_KEYS = frozenset({
    "dataset_val", "run_val_every_n_steps", "batch_size_val", "max_val_batches", "epochs_to_save",
    "num_threads", "metrics_log",
}) | FINETUNE_TOP_LEVEL_KEYS
DEFAULT_BATCH_SIZE_VAL = 64
# where torchtune's checkpointers put the recipe state and each saved epoch, under output_dir
RECIPE_STATE = Path(RECIPE_STATE_DIRNAME) / "recipe_state.pt"
EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


def check_config(cfg: DictConfig) -> None:
    """Reject unknown top-level keys and malformed validation settings before any heavy work."""
    check_finetune_config(cfg)  # the run contract (cruijff_kit/run_config.py): the same errors as at scaffold time
    unknown = sorted(set(cfg.keys()) - STOCK_KEYS - VAL_KEYS)
    if unknown:
        raise CkError("finetune.yaml", unknown, "unknown config keys",
                      "remove them or fix their spelling (see docs/finetune_reference.yaml)")
    if (cfg.get("run_val_every_n_steps") or 0) > 0 and cfg.get("dataset_val") is None:
        raise CkError("dataset_val", None, "missing while run_val_every_n_steps > 0",
                      "add a dataset_val section or set run_val_every_n_steps: 0")
    parse_epochs_to_save(cfg.get("epochs_to_save"), cfg.epochs)


def parse_epochs_to_save(value, total_epochs: int) -> set[int]:
    """0-based epochs whose checkpoint is written; the last epoch is always included."""
    if value is None or value == "all":
        return set(range(total_epochs))
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple, ListConfig)) or not all(
        isinstance(e, int) and not isinstance(e, bool) and 0 <= e < total_epochs for e in value
    ):
        raise CkError("epochs_to_save", value, f"must be 'all', null or a list of epochs in 0..{total_epochs - 1}",
                      "e.g. epochs_to_save: [0, 4] (the last epoch is always saved)")
    return set(value) | {total_epochs - 1}


def check_resume_checkpoint(output_dir: str | os.PathLike) -> None:
    """Before a resume: the newest epoch_<k>/ and recipe_state.pt must come from the same finished save.

    torchtune writes both in place, the recipe state last (and only for epochs before the last), so a job
    killed while saving leaves a truncated file, which torchtune reports as "Unable to load checkpoint", or
    an epoch_<k>/ newer than the recipe state, whose weights it would resume with the previous epoch's
    optimizer state and epoch count.
    """
    out = Path(output_dir)
    epochs = sorted(int(m.group(1)) for p in (out.iterdir() if out.is_dir() else ())
                    if (m := EPOCH_DIR.match(p.name)) and p.is_dir())
    state_path = out / RECIPE_STATE
    try:
        epochs_run = int(torch.load(state_path, map_location="cpu", weights_only=True, mmap=True)[training.EPOCHS_KEY])
    except Exception:  # missing, truncated or foreign: said below
        epochs_run = None
    start_over = "set resume_from_checkpoint: False to train from the start"
    if not epochs:
        raise CkError("resume_from_checkpoint", True, f"no epoch_<k> checkpoint in {out}", start_over)
    newest = out / f"epoch_{epochs[-1]}"
    if epochs_run == epochs[-1] + 1:
        return
    if epochs_run is None or epochs_run - 1 not in epochs:
        raise CkError("checkpoint", str(state_path), f"is missing, unreadable or matches no epoch_<k>/ (newest: "
                      f"{newest.name}): the job ended while saving it, or before any epoch but the last was saved",
                      start_over)
    raise CkError("checkpoint", str(newest), f"is newer than {RECIPE_STATE} (saved after epoch {epochs_run - 1}): "
                  "the job ended while saving it, or it is the last epoch and training had finished",
                  f"delete {newest} to resume after epoch {epochs_run - 1}")


def quiet_offline_wandb() -> None:
    """W&B runs offline, without console capture, system stats, git or code probes (no network, less start-up)."""
    for key, value in {
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_X_DISABLE_META": "true",
    }.items():
        os.environ.setdefault(key, value)


class MetricsJsonl:
    """metrics.jsonl: one JSON object per event, appended and flushed at once (monitor tails it)."""

    def __init__(self, path: str | os.PathLike, start: float):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._start = start

    def write(self, event: str, step: int, epoch: int, **fields) -> None:
        now = time.time()
        record = {"event": event, "step": step, "epoch": epoch,
                  "wall_time": round(time.perf_counter() - self._start, 4), "time": now}
        record.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in fields.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class LoRAFinetuneRecipeSingleDeviceVal(_stock.LoRAFinetuneRecipeSingleDevice):
    """torchtune's single-device LoRA recipe plus validation, answer-token metrics and metrics.jsonl."""

    def __init__(self, cfg: DictConfig) -> None:
        check_config(cfg)
        threads = cfg.get("num_threads", 1)
        if cfg.device == "cpu" and threads:
            torch.set_num_threads(threads)
        super().__init__(cfg)
        self._run_val_every_n_steps = cfg.get("run_val_every_n_steps", 0) or 0
        self._batch_size_val = cfg.get("batch_size_val") or DEFAULT_BATCH_SIZE_VAL
        self._max_val_batches = cfg.get("max_val_batches")
        self._epochs_to_save = parse_epochs_to_save(cfg.get("epochs_to_save"), self.total_epochs)
        self._metrics_log_path = cfg.get("metrics_log") or os.path.join(cfg.output_dir, "logs", "metrics.jsonl")
        self._last_answers = None

    # ---------------------------------------------------------------- setup

    def setup(self, cfg: DictConfig) -> None:
        if "wandb" in cfg.metric_logger.get("_component_", "").lower():
            quiet_offline_wandb()
        super().setup(cfg)
        self._fix_resumed_step_count(cfg)
        self._train_start = time.perf_counter()
        self._metrics = MetricsJsonl(self._metrics_log_path, self._train_start)

        # the stock loss step pads shifted labels from this cache; validation batches can be larger
        rows = max(cfg.batch_size, self._batch_size_val)
        self.ignore_labels_cache = torch.full((rows, 1), self._loss_fn.ignore_index, device=self._device)

        self._answer_header = torch.tensor(assistant_header_ids(self._tokenizer), device=self._device)
        self._logits_hook = self._model.register_forward_hook(self._keep_logits)
        self._kept_logits = None
        self._train_answers = AnswerMeter()

        self._val_dataset = None
        if self._run_val_every_n_steps > 0:
            self._val_dataset, self._val_dataloader = self._setup_val_data(cfg.dataset_val)
            # the raw input of each row, for val_predictions.jsonl (column_map: our name -> the file's column)
            self._val_input_column = (cfg.dataset_val.get("column_map") or {}).get("input", "input")
            log.info(f"Validation: {len(self._val_dataset)} rows every {self._run_val_every_n_steps} steps "
                     f"and at the end, batch size {self._batch_size_val}.")

    def load_checkpoint(self, cfg_checkpointer: DictConfig) -> dict:
        """The stock loading, after checking that a resume finds a whole checkpoint (check_resume_checkpoint)."""
        explicit = cfg_checkpointer.get("adapter_checkpoint") or cfg_checkpointer.get("recipe_checkpoint")
        if self._resume_from_checkpoint and not explicit:
            check_resume_checkpoint(cfg_checkpointer.output_dir)
        return super().load_checkpoint(cfg_checkpointer)

    def _fix_resumed_step_count(self, cfg: DictConfig) -> None:
        """On resume, continue the step count and LR schedule where the saved epoch ended.

        The stock recipe sets global_step only when max_steps_per_epoch truncates an epoch, so a resumed
        run would otherwise restart at step 0 with a fresh warm-up.
        """
        resumed_step = self.epochs_run * self._steps_per_epoch
        if self.global_step != resumed_step:
            self.global_step = resumed_step
            self._lr_scheduler = self._setup_lr_scheduler(
                cfg_lr_scheduler=cfg.lr_scheduler,
                num_training_steps=self.total_epochs * self._steps_per_epoch,
                last_epoch=self.global_step - 1,
            )
        if self.epochs_run:
            log.info(f"Resumed after epoch {self.epochs_run - 1}: continuing at epoch {self.epochs_run}, "
                     f"step {self.global_step}.")

    def _setup_val_data(self, cfg_dataset_val: DictConfig):
        """Validation rows in file order, all of them (no shuffle, no dropped last batch)."""
        dataset = config.instantiate(cfg_dataset_val, self._tokenizer)
        collate = _get_component_from_path("torchtune.data.padded_collate_sft")
        loader = DataLoader(
            dataset,
            batch_size=self._batch_size_val,
            shuffle=False,
            drop_last=False,
            collate_fn=partial(collate, padding_idx=self._tokenizer.pad_id, ignore_idx=self._loss_fn.ignore_index),
        )
        return dataset, loader

    # ---------------------------------------------------------------- steps

    def _keep_logits(self, module, inputs, output) -> None:
        self._kept_logits = output

    def _loss_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The stock loss step; the answer-token results of the batch are left in `self._last_answers`."""
        tokens = batch["tokens"]
        loss = super()._loss_step(batch)
        self._last_answers = answer_results(self._kept_logits, tokens, self._answer_header)
        self._kept_logits = None
        return loss

    def _optimizer_step(self, num_tokens: torch.Tensor) -> None:
        training.scale_grads(self._model, 1 / num_tokens)
        if self._clip_grad_norm is not None:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self._model.parameters(), max_norm=float(self._clip_grad_norm))
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        self._lr_scheduler.step()
        self.global_step += 1

    def _log_train(self, epoch: int, loss: float, num_tokens: int, step_seconds: float) -> None:
        answer_loss, answer_acc, _ = self._train_answers.mean()
        self._train_answers.reset()
        scalars = {
            "loss": loss,
            "lr": self._optimizer.param_groups[0]["lr"],
            "tokens_per_second_per_gpu": num_tokens / step_seconds,
            "train_answer_loss": answer_loss,
            "train_answer_acc": answer_acc,
        }
        if self._device.type != "cpu" and self._log_peak_memory_stats:
            scalars.update(training.get_memory_stats(device=self._device))
        if self._clip_grad_norm is not None:
            scalars["grad_norm"] = float(self._grad_norm)
        self._metric_logger.log_dict(scalars, step=self.global_step)
        self._metrics.write("train", self.global_step, epoch, **scalars)

    # ---------------------------------------------------------------- loops

    def train(self) -> None:
        """Epochs of token-weighted gradient accumulation, as the stock loop, plus validation and metrics."""
        every = self._run_val_every_n_steps
        with self._profiler as prof:
            for epoch in range(self.epochs_run, self.total_epochs):
                self._dataloader.sampler.set_epoch(epoch)
                # micro-batches left over from the previous epoch (len % accumulation) must not leak in
                self._optimizer.zero_grad(set_to_none=True)
                pbar = tqdm(total=self._steps_per_epoch, desc=f"epoch {epoch + 1}/{self.total_epochs}")
                t0, running_loss, num_tokens = time.perf_counter(), 0.0, 0
                for idx, batch in enumerate(self._dataloader):
                    utils.batch_to_device(batch, self._device)
                    batch_tokens = (batch["labels"] != self._loss_fn.ignore_index).sum()
                    loss = self._loss_step(batch) * batch_tokens
                    self._train_answers.update(self._last_answers)
                    running_loss += loss.detach()
                    num_tokens += batch_tokens
                    loss.backward()
                    prof.step()
                    if (idx + 1) % self._gradient_accumulation_steps != 0:
                        continue

                    self._optimizer_step(num_tokens)
                    step_loss = float(running_loss) / int(num_tokens)
                    pbar.update(1)
                    pbar.set_description(f"epoch {epoch + 1}|step {self.global_step}|loss {step_loss:.4f}")
                    if self.global_step % self._log_every_n_steps == 0:
                        self._log_train(epoch, step_loss, int(num_tokens), time.perf_counter() - t0)
                    is_last_step = self.global_step == self.total_epochs * self._steps_per_epoch
                    if every and self.global_step % every == 0 and not is_last_step:
                        self.validate(epoch)  # the last step's validation is the final one below
                    t0, running_loss, num_tokens = time.perf_counter(), 0.0, 0
                    if (idx + 1) // self._gradient_accumulation_steps == self.max_steps_per_epoch:
                        break
                pbar.close()
                self.epochs_run += 1
                self.save_checkpoint(epoch=epoch)

        if every:
            self.validate(self.total_epochs - 1, final=True)
        self._metrics.write("end", self.global_step, self.total_epochs - 1, steps=self.global_step,
                            wall_time=round(time.perf_counter() - self._train_start, 4))

    @torch.no_grad()
    def validate(self, epoch: int, final: bool = False) -> dict:
        """Loss over the training token set and answer-token metrics over the validation set (file order)."""
        started = time.perf_counter()
        self._model.eval()
        loss_sum, loss_tokens = 0.0, 0
        answers = AnswerMeter()
        predictions = []
        rows_seen = 0
        for i, batch in enumerate(self._val_dataloader):
            if self._max_val_batches is not None and i >= self._max_val_batches:
                break
            utils.batch_to_device(batch, self._device)
            tokens = batch["tokens"]
            batch_tokens = (batch["labels"] != self._loss_fn.ignore_index).sum()
            loss_sum += self._loss_step(batch) * batch_tokens
            loss_tokens += batch_tokens
            results = self._last_answers
            answers.update(results)
            if final:
                predictions.extend(self._prediction_rows(results, rows_seen))
            rows_seen += tokens.size(0)
        self._model.train()

        answer_loss, answer_acc, _ = answers.mean()
        scalars = {
            "val_loss": float(loss_sum) / max(int(loss_tokens), 1),
            "val_answer_loss": answer_loss,
            "val_answer_acc": answer_acc,
            "val_examples": rows_seen,
        }
        self._metric_logger.log_dict(scalars, step=self.global_step)
        self._metrics.write("val", self.global_step, epoch, final=final, **scalars)
        if final:
            self._write_predictions(predictions)
        log.info(f"Validation at step {self.global_step}{' (final)' if final else ''}: "
                 f"val_loss {scalars['val_loss']:.4f}, answer loss {answer_loss:.4f}, answer acc {answer_acc:.4f} "
                 f"on {rows_seen} rows in {time.perf_counter() - started:.2f}s")
        return scalars

    def _prediction_rows(self, results, first_index: int) -> list[dict]:
        source = self._val_dataset._data
        decode = self._token_text
        rows = []
        for row, loss, predicted, target in zip(results.rows.tolist(), results.loss.tolist(),
                                                results.predicted.tolist(), results.target.tolist()):
            index = first_index + row
            rows.append({"index": index, "input": source[index].get(self._val_input_column),
                         "target": decode(target), "predicted": decode(predicted), "answer_loss": loss})
        return rows

    def _token_text(self, token_id: int) -> str:
        """The text of one token; ids the tokenizer does not know (a model's padded vocabulary) as <id N>."""
        try:
            return self._tokenizer.decode([token_id], truncate_at_eos=False, skip_special_tokens=False)
        except (KeyError, ValueError, IndexError):
            return f"<id {token_id}>"

    def _write_predictions(self, predictions: list[dict]) -> None:
        path = Path(self._metrics_log_path).parent / "val_predictions.jsonl"
        atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in predictions))

    # ---------------------------------------------------------------- checkpoints and end

    def save_checkpoint(self, epoch: int) -> None:
        """The stock checkpoint (adapter, and recipe state while epochs remain), for the epochs to save."""
        if epoch not in self._epochs_to_save:
            log.info(f"Epoch {epoch}: not in epochs_to_save, no checkpoint written.")
            return
        started = time.perf_counter()
        super().save_checkpoint(epoch=epoch)
        log.info(f"Checkpoint of epoch {epoch} saved in {time.perf_counter() - started:.2f}s.")

    def cleanup(self) -> None:
        self._logits_hook.remove()
        self._metrics.close()
        super().cleanup()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point: `--config finetune.yaml` plus torchtune's key=value overrides."""
    threads = cfg.get("num_threads", 1)
    if cfg.get("device", "cpu") == "cpu" and threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    config.log_config(recipe_name="LoRAFinetuneRecipeSingleDeviceVal", cfg=cfg)
    recipe = LoRAFinetuneRecipeSingleDeviceVal(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
