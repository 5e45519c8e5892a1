"""What a (re)started training job does, decided at its start from its output_dir alone.

    python -m cruijff_kit.tools.torchtune.resume OUTPUT_DIR    # prints start, resume or done

- done: metrics.jsonl already has the "end" event: training finished (a job requeued after its last
  epoch must not train again).
- resume: a complete epoch checkpoint exists (the newest epoch_<k>/ and recipe_state.pt from the same
  finished save, as validation.check_resume_checkpoint requires): `resume_from_checkpoint=True`.
- start: nothing usable (no checkpoint yet, or one torn by a kill while saving): train from the start.

finetune.slurm runs it before `tune run`, so a job that SLURM requeues (preemption, node failure,
`scontrol requeue`) continues from its last epoch instead of starting over. The recipe then keeps
metrics.jsonl's lines up to that epoch only, so every step is in it once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

START, RESUME, DONE = "start", "resume", "done"


def training_finished(output_dir: Path) -> bool:
    metrics = Path(output_dir) / "logs" / "metrics.jsonl"
    try:
        lines = metrics.read_text().splitlines()
    except (FileNotFoundError, IsADirectoryError):
        return False
    for line in reversed(lines):
        try:
            if json.loads(line).get("event") == "end":
                return True
        except (ValueError, AttributeError):
            continue
    return False


def decide(output_dir: str | Path) -> str:
    output_dir = Path(output_dir)
    if training_finished(output_dir):
        return DONE
    if not any(p.is_dir() and p.name.startswith("epoch_") for p in (output_dir.iterdir() if output_dir.is_dir() else ())):
        return START  # cheap: no torch import for a first start
    from cruijff_kit.errors import CkError
    from cruijff_kit.tools.torchtune.custom_recipes.validation import check_resume_checkpoint

    try:
        check_resume_checkpoint(output_dir)
    except CkError:
        return START
    return RESUME


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m cruijff_kit.tools.torchtune.resume OUTPUT_DIR")
    print(decide(sys.argv[1]))
