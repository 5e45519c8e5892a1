"""Early stop: the default check (`ck sanity-check bit_sequences`, embedded preset) without and with it,
interleaved in one process on one machine, so both see the same load.

    python bench/bench_early_stop.py [--repeats 2] [--scratch DIR]

"old" is the embedded preset with early_stop_after removed (every run trains to its end, as before);
"new" is the preset as shipped (early_stop_after 2 for the learnable run; the floor run trains to the end).
Prints each check's wall time, its verdicts and the parity run's steps and steps-to-target.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from cruijff_kit.sanity_check import run_sanity_check
from cruijff_kit.settings import load_settings
from sanity_checks.bit_sequences.check import CHECK


def one(mode: str, scratch: Path, k: int) -> dict:
    hyper = CHECK.presets["embedded"]["hyper"]
    shipped = hyper.get("early_stop_after")
    if mode == "old":
        hyper.pop("early_stop_after", None)
    settings = load_settings({"scratch": str(scratch / f"{mode}{k}")}, env={}, path=scratch / "settings.yaml")
    out = io.StringIO()
    started = time.monotonic()
    try:
        code = run_sanity_check("bit_sequences", settings=settings, executor="local", exp_name=f"{mode}{k}", out=out,
                                live=False)
    finally:
        if shipped is not None:
            hyper["early_stop_after"] = shipped
    wall = time.monotonic() - started
    exp_dir = scratch / f"{mode}{k}" / "ck-sanity-checks" / f"{mode}{k}"
    summary = json.loads((exp_dir / "summary.json").read_text())
    verdicts = {r["name"]: r["verdict"] for r in summary["runs"]}
    metrics = [json.loads(line) for line in
               (scratch / f"{mode}{k}" / "ck-outputs" / f"{mode}{k}" / "ck-out-parity_run" / "logs" / "metrics.jsonl")
               .read_text().splitlines()]
    end = metrics[-1]
    training = []
    for run in verdicts:
        path = scratch / f"{mode}{k}" / "ck-outputs" / f"{mode}{k}" / f"ck-out-{run}" / "logs" / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        training.append(rows[-1].get("wall_time", 0.0))
    reached = next((r["step"] for r in metrics if r.get("event") == "val" and r.get("val_answer_acc", 0) >= 0.99), None)
    return {"mode": mode, "wall_s": round(wall, 1), "training_wall_s": round(max(training), 1), "exit": code,
            "verdicts": verdicts,
            "experiment": {v["check"]: v["verdict"] for v in summary["experiment_verdicts"]},
            "parity_steps": end.get("steps"), "parity_steps_to_target": reached,
            "stopped_early": end.get("stopped_early")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scratch", default=None)
    args = parser.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="ck-bench-early-stop-"))
    rows = []
    for k in range(args.repeats):
        for mode in (("old", "new") if k % 2 == 0 else ("new", "old")):
            row = one(mode, scratch, k)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for mode in ("old", "new"):
        walls = [r["wall_s"] for r in rows if r["mode"] == mode]
        trains = [r["training_wall_s"] for r in rows if r["mode"] == mode]
        print(f"{mode}: check wall {walls} s, median {statistics.median(walls):.1f} s; "
              f"training (longest run's end wall_time) {trains} s, median {statistics.median(trains):.1f} s")
    old = statistics.median(r["wall_s"] for r in rows if r["mode"] == "old")
    new = statistics.median(r["wall_s"] for r in rows if r["mode"] == "new")
    same = len({json.dumps(r["verdicts"], sort_keys=True) for r in rows}) == 1
    print(f"wall-time cut {1 - new / old:.0%} (median new / median old); same verdicts in every check: {same}")


if __name__ == "__main__":
    main()
