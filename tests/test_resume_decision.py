"""What a (re)started training job does (cruijff_kit/tools/torchtune/resume.py), and metrics.jsonl on resume."""

from __future__ import annotations

import json
import subprocess
import sys

from cruijff_kit.tools.torchtune.resume import DONE, RESUME, START, decide


def _metrics(out, rows):
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_start_resume_or_done_from_the_output_dir(tmp_path):
    import torch

    out = tmp_path / "out"
    assert decide(out) == START  # nothing yet
    _metrics(out, [{"event": "train", "step": 1, "epoch": 0}])
    (out / "epoch_0").mkdir()
    assert decide(out) == START  # killed while saving its first checkpoint: no recipe state
    state = out / "recipe_state" / "recipe_state.pt"
    state.parent.mkdir()
    torch.save({"epochs_run": 1, "seed": 42}, state)
    assert decide(out) == RESUME
    _metrics(out, [{"event": "train", "step": 1, "epoch": 0}, {"event": "end", "step": 2, "epoch": 1, "steps": 2}])
    assert decide(out) == DONE  # requeued after the end: do not train again
    printed = subprocess.run([sys.executable, "-m", "cruijff_kit.tools.torchtune.resume", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert printed.stdout.strip() == DONE


def test_metrics_file_keeps_the_saved_epochs_on_resume_and_starts_anew_otherwise(tmp_path):
    from cruijff_kit.tools.torchtune.custom_recipes.validation import MetricsJsonl

    path = tmp_path / "logs" / "metrics.jsonl"
    rows = [{"event": "train", "step": 1, "epoch": 0}, {"event": "val", "step": 2, "epoch": 0},
            {"event": "train", "step": 3, "epoch": 1}]
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"event": "tr')  # killed mid-line
    metrics = MetricsJsonl(path, 0.0, resumed_epochs=1)
    metrics.write("train", 3, 1, loss=0.5)
    metrics.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[:2] == rows[:2] and [(r["step"], r["epoch"]) for r in lines[2:]] == [(3, 1)]
    MetricsJsonl(path, 0.0).close()  # a run from the start
    assert path.read_text() == ""
