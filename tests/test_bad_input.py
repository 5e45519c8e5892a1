"""Bad input over every command and every file kind: exit 2, one clean stderr line, nothing changed.

Each case prepares a fault in a copy of one workspace (a scaffolded experiment E, a designed-only
experiment F, their datasets and a settings file), snapshots the tree (paths and bytes), runs the
command in-process (`cruijff_kit.cli.main`, or the renderer's `main`) and checks:
exit status 2, exactly one stderr line, no `Traceback`, the tree unchanged. Workflow logs
(`*-experiment.log`, which get one line saying what failed) and lock files are not part of the snapshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from cruijff_kit import cli
from cruijff_kit.experiment import Experiment
from cruijff_kit.scaffold import scaffold_experiment
from cruijff_kit.settings import load_settings
from cruijff_kit.tools.torchtune import setup_finetune
from sanity_checks.bit_sequences.check import BitSequenceArgs, expected_for

NAME_E, NAME_F = "exp_e", "exp_f"
SMALL = {"bit_length": 6, "N": 200, "val_size": 16, "seed": 42}
UNDECODABLE = b"name: \xff\xfe\xfa bad\n"


# ---------------------------------------------------------------------------------------------- workspace


def _plan(root: Path, name: str) -> dict:
    scratch = root / "scratch"
    runs = []
    for run_name, label, parity, p in (("parity_run", "parity", True, 0.0), ("probabilistic_run", "prob_p05", False, 0.5)):
        gen = BitSequenceArgs(bit_parity=parity, p=p, **SMALL)
        runs.append({
            "name": run_name, "model": "Llama-3.2-1B-Instruct",
            "dataset": {"label": f"{name}_{label}", "generator": gen.model_dump()},
            "hyper": {"epochs": 1, "batch_size": 4, "lora_rank": 8, "lr": 3e-3, "num_warmup_steps": 2,
                      "log_every_n_steps": 1, "run_val_every_n_steps": 10, "train_on_input": True},
            "compute": {"gpus": 1, "time": "00:10:00", "mem": "4G"},
            "expected": expected_for(gen).model_dump(),
        })
    return {
        "name": name, "kind": "sanity_check", "date": "2025-10-28", "purpose": "test",
        "experiment_dir": str(scratch / "ck-sanity-checks" / name),
        "output_root": str(scratch / "ck-outputs" / name),
        "models_dir": str(scratch / "models"), "data_dir": str(root / "data"),
        "wandb_project": "bit_sequences_2025-10-28", "runs": runs,
    }


def _env(root: Path) -> dict[str, str]:
    return {"CK_SCRATCH": str(root / "scratch"), "CK_DATA_DIR": str(root / "data"),
            "CK_MODELS_DIR": str(root / "scratch" / "models"), "CK_VENV": "", "CK_CONDA_ENV": "ck",
            "CK_CONFIG": str(root / "settings.yaml")}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """E scaffolded (with metrics), F designed only; built once, copied per case."""
    root = tmp_path_factory.mktemp("template")
    settings = load_settings(env=_env(root), path=root / "settings.yaml")
    for name in (NAME_E, NAME_F):
        Experiment.from_plan_dict(_plan(root, name)).write()
    scaffold_experiment(root / "scratch" / "ck-sanity-checks" / NAME_E, settings=settings, progress=False)
    logs = root / "scratch" / "ck-outputs" / NAME_E / "ck-out-parity_run" / "logs"
    logs.mkdir(parents=True)
    (logs / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 0.7}\n'
                                        '{"event": "val", "step": 1, "loss": 0.6, "accuracy": 0.5}\n')
    (root / "settings.yaml").write_text("slurm_account: acct\n")
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("not an experiment\n")
    (root / "a_file").write_text("a file where a directory is expected\n")
    return root


class WS:
    """One case's workspace: a copy of the template with every absolute path moved to `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.e = root / "scratch" / "ck-sanity-checks" / NAME_E
        self.f = root / "scratch" / "ck-sanity-checks" / NAME_F
        self.run = self.e / "parity_run"
        self.data = root / "data"
        self.settings = root / "settings.yaml"
        self.file = root / "a_file"
        self.plain = root / "plain"

    def unwritable(self) -> str:
        """A directory path that cannot be created or written, also as root (sysfs refuses mkdir)."""
        if os.geteuid() == 0:
            return "/sys/ck-unwritable-dir"
        locked = self.root / "locked"
        locked.mkdir(exist_ok=True)
        locked.chmod(0o500)
        return str(locked / "sub")

    def summary(self, exp: Path | None = None) -> Path:
        return (exp or self.e) / "experiment_summary.md"

    def edit_plan(self, exp: Path, old: str, new: str) -> None:
        path = self.summary(exp)
        prose, plan = path.read_text().split("```yaml", 1)  # edit the plan, not the prose above it
        assert old in plan, old
        path.write_text(prose + "```yaml" + plan.replace(old, new, 1))

    def use_dataset_file(self, exp: Path, content: bytes | str | None, run: str = "parity") -> Path:
        """Point run `run` of the plan at a hand-made dataset file (path, no generator)."""
        target = self.root / "hand" / "data.json"
        target.parent.mkdir(exist_ok=True)
        if content is not None:
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        path = self.summary(exp)
        lines = path.read_text().splitlines(keepends=True)
        plan_start = next(i for i, line in enumerate(lines) if line.startswith("```yaml"))
        start = next(i for i, line in enumerate(lines) if i > plan_start and f"label: {exp.name}_{run}" in line)
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        end = start + 1
        while end < len(lines) and lines[end].startswith(indent) and not lines[end].lstrip().startswith(("expected", "hyper", "compute")):
            end += 1
        # keep `label:` and `check:`, drop the generator, add `path:`
        kept = [lines[start], f"{indent}check: bit_sequences\n", f"{indent}path: {target}\n"]
        rest = lines[end:]
        path.write_text("".join(lines[:start] + kept + rest))
        return target

    def state(self, data: bytes | str) -> None:
        (self.e / ".ck-run-state.json").write_bytes(data.encode() if isinstance(data, str) else data)


def _copy(template: Path, dest: Path) -> None:
    shutil.copytree(template, dest, symlinks=True)
    old, new = str(template).encode(), str(dest).encode()
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if old in data:
                path.write_bytes(data.replace(old, new))


def snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name.endswith(("-experiment.log", ".lock")):
            continue
        out[rel] = path.read_bytes() if path.is_file() and os.access(path, os.R_OK) else None
    return out


# ---------------------------------------------------------------------------------------------- the cases


def W(s: str) -> Callable[[WS], list[str]]:
    """A case whose only preparation is its argv (`{e}`, `{f}`, `{run}`, `{file}`, `{root}`, `{plain}` filled in;
    `<empty>` is an empty argument)."""
    return lambda ws: [a.format(e=ws.e, f=ws.f, run=ws.run, file=ws.file, root=ws.root, plain=ws.plain,
                                unw=ws.unwritable(), data=ws.data) if a != "<empty>" else "" for a in s.split()]


def prep(fn: Callable[[WS], None], argv: str) -> Callable[[WS], list[str]]:
    def case(ws: WS) -> list[str]:
        fn(ws)
        return W(argv)(ws)
    return case


GEN = "generate bit-sequences --bit_length 6 --N 200 --val_size 16 --bit_parity True --output g.json --output_dir {root}/gen"
DESIGN = "design bit-sequences --yes --name new_exp --scratch {root}/scratch --data-dir {root}/data --models-dir {root}/scratch/models"

GENERATE_CASES = {
    "gen-bit_length-zero": W(GEN.replace("--bit_length 6", "--bit_length 0")),
    "gen-bit_length-word": W(GEN.replace("--bit_length 6", "--bit_length six")),
    "gen-bit_length-huge": W(GEN.replace("--bit_length 6", "--bit_length 999")),
    "gen-bit_length-float": W(GEN.replace("--bit_length 6", "--bit_length 6.5")),
    "gen-N-negative": W(GEN.replace("--N 200", "--N -5")),
    "gen-N-zero": W(GEN.replace("--N 200", "--N 0")),
    "gen-N-float": W(GEN.replace("--N 200", "--N 1.5")),
    "gen-val_size-zero": W(GEN.replace("--val_size 16", "--val_size 0")),
    "gen-val_size-equals-N": W(GEN.replace("--val_size 16", "--val_size 200")),
    "gen-val_size-word": W(GEN.replace("--val_size 16", "--val_size many")),
    "gen-bit_parity-maybe": W(GEN.replace("--bit_parity True", "--bit_parity maybe")),
    "gen-p-above-one": W(GEN + " --p 1.5"),
    "gen-p-negative": W(GEN + " --p -0.1"),
    "gen-p-nan": W(GEN + " --p nan"),
    "gen-p-word": W(GEN + " --p half"),
    "gen-seed-word": W(GEN + " --seed x"),
    "gen-output-missing": W(GEN.replace("--output g.json", "")),
    "gen-output-empty": W(GEN.replace("--output g.json", "--output=")),
    "gen-output-is-path": W(GEN.replace("--output g.json", "--output sub/g.json")),
    "gen-output-dotdot": W(GEN.replace("--output g.json", "--output ..")),
    "gen-output_dir-is-file": W(GEN.replace("{root}/gen", "{file}")),
    "gen-output_dir-under-file": W(GEN.replace("{root}/gen", "{file}/sub")),
    "gen-output_dir-unwritable": W(GEN.replace("{root}/gen", "{unw}")),
    "gen-output-is-directory": W(GEN.replace("--output g.json", "--output plain").replace("{root}/gen", "{root}")),
    "gen-bit_length-missing": W(GEN.replace("--bit_length 6", "")),
    "gen-replace-dataset-a-run-reads": W(GEN.replace("--bit_parity True", "--bit_parity False")
                                         .replace("--output g.json", f"--output {NAME_E}_parity.json")
                                         .replace("{root}/gen", "{data}")),
}

DESIGN_CASES = {
    "design-lr-nan": W(DESIGN + " --lr nan"),
    "design-lr-negative": W(DESIGN + " --lr -1"),
    "design-lr-huge": W(DESIGN + " --lr 5"),
    "design-lr-inf": W(DESIGN + " --lr inf"),
    "design-epochs-zero": W(DESIGN + " --epochs 0"),
    "design-epochs-negative": W(DESIGN + " --epochs -3"),
    "design-batch-size-zero": W(DESIGN + " --batch-size 0"),
    "design-lora-rank-zero": W(DESIGN + " --lora-rank 0"),
    "design-gpus-negative": W(DESIGN + " --gpus -1"),
    "design-cpus-zero": W(DESIGN + " --cpus 0"),
    "design-time-bad": W(DESIGN + " --time 99:99:99"),
    "design-time-word": W(DESIGN + " --time soon"),
    "design-time-zero": W(DESIGN + " --time 00:00:00"),
    "design-mem-zero": W(DESIGN + " --mem 0"),
    "design-mem-unit": W(DESIGN + " --mem 12X"),
    "design-warmup-negative": W(DESIGN + " --num-warmup-steps -1"),
    "design-grad-acc-zero": W(DESIGN + " --gradient-accumulation-steps 0"),
    "design-batch-size-val-zero": W(DESIGN + " --batch-size-val 0"),
    "design-log-every-zero": W(DESIGN + " --log-every-n-steps 0"),
    "design-val-every-negative": W(DESIGN + " --run-val-every-n-steps -1"),
    "design-name-space": lambda ws: W(DESIGN)(ws) + ["--name", "a b"],
    "design-name-slash": W(DESIGN.replace("--name new_exp", "--name ../x")),
    "design-name-dot": W(DESIGN.replace("--name new_exp", "--name .hidden")),
    "design-name-empty": W(DESIGN.replace("--name new_exp", "--name=")),
    "design-model-unknown": W(DESIGN + " --model gpt-5"),
    "design-model-path": W(DESIGN + " --model ../m"),
    "design-wandb-slash": W(DESIGN + " --wandb-project a/b"),
    "design-scratch-is-file": W(DESIGN.replace("--scratch {root}/scratch", "--scratch {file}")),
    "design-scratch-under-file": W(DESIGN.replace("--scratch {root}/scratch", "--scratch {file}/s")),
    "design-scratch-unwritable": W(DESIGN.replace("--scratch {root}/scratch", "--scratch {unw}")),
    "design-data-dir-is-file": W(DESIGN.replace("--data-dir {root}/data", "--data-dir {file}")),
    "design-models-dir-is-file": W(DESIGN.replace("--models-dir {root}/scratch/models", "--models-dir {file}")),
    "design-existing-plan": W(DESIGN.replace("--name new_exp", f"--name {NAME_E}")),
    "design-into-non-experiment-dir": prep(lambda ws: (ws.root / "scratch" / "ck-sanity-checks" / "new_exp").mkdir()
                                           or (ws.root / "scratch" / "ck-sanity-checks" / "new_exp" / "x.txt").write_text("x"),
                                           DESIGN),
    "design-exp-dir-is-file": prep(lambda ws: (ws.root / "scratch" / "ck-sanity-checks" / "new_exp").write_text("x"), DESIGN),
    "design-bad-settings-file": prep(lambda ws: ws.settings.write_bytes(UNDECODABLE), DESIGN),
}


def _plan_case(old: str, new: str, exp: str = "f", verb: str = "scaffold") -> Callable[[WS], list[str]]:
    return prep(lambda ws: ws.edit_plan(getattr(ws, exp), old, new), f"{verb} {{{exp}}}")


def _hand_dataset(content, run: str = "parity") -> Callable[[WS], list[str]]:
    return prep(lambda ws: ws.use_dataset_file(ws.f, content, run), "scaffold {f}")


ROWS = [{"input": "000001", "output": "1"}, {"input": "000011", "output": "0"}]
VAL = [{"input": "000111", "output": "1"}]

SCAFFOLD_CASES = {
    "scaffold-missing-dir": W("scaffold {root}/nope"),
    "scaffold-dir-is-file": W("scaffold {file}"),
    "scaffold-not-an-experiment": W("scaffold {plain}"),
    "scaffold-summary-undecodable": prep(lambda ws: ws.summary(ws.f).write_bytes(UNDECODABLE), "scaffold {f}"),
    "scaffold-summary-is-directory": prep(lambda ws: (ws.summary(ws.f).unlink(), ws.summary(ws.f).mkdir()), "scaffold {f}"),
    "scaffold-summary-truncated": prep(lambda ws: ws.summary(ws.f).write_text(ws.summary(ws.f).read_text()[:400]), "scaffold {f}"),
    "scaffold-summary-no-plan": prep(lambda ws: ws.summary(ws.f).write_text("# notes\n\nno plan here\n"), "scaffold {f}"),
    "scaffold-plan-not-yaml": _plan_case("kind: sanity_check", "kind: [sanity_check"),
    "scaffold-plan-duplicate-key": _plan_case("kind: sanity_check", "kind: sanity_check\nkind: experiment"),
    "scaffold-plan-is-a-list": prep(lambda ws: ws.summary(ws.f).write_text("## Plan\n\n```yaml\n- a\n- b\n```\n"), "scaffold {f}"),
    "scaffold-plan-unknown-key": _plan_case("kind: sanity_check", "kind: sanity_check\nflavour: mint"),
    "scaffold-plan-kind-bad": _plan_case("kind: sanity_check", "kind: party"),
    "scaffold-plan-date-bad": _plan_case("date: '2025-10-28'", "date: yesterday"),
    "scaffold-plan-lr-word": _plan_case("lr: 0.003", "lr: fast"),
    "scaffold-plan-lr-negative": _plan_case("lr: 0.003", "lr: -0.1"),
    "scaffold-plan-lr-nan": _plan_case("lr: 0.003", "lr: .nan"),
    "scaffold-plan-epochs-zero": _plan_case("epochs: 1", "epochs: 0"),
    "scaffold-plan-epochs-list": _plan_case("epochs: 1", "epochs: [1, 2]"),
    "scaffold-plan-batch-size-bool": _plan_case("batch_size: 4", "batch_size: true"),
    "scaffold-plan-time-bad": _plan_case("time: 00:10:00", "time: 25:61:00"),
    "scaffold-plan-mem-bad": _plan_case("mem: 4G", "mem: lots"),
    "scaffold-plan-gpus-negative": _plan_case("gpus: 1", "gpus: -2"),
    "scaffold-plan-run-name-space": _plan_case("name: parity_run", "name: parity run"),
    "scaffold-plan-run-name-slash": _plan_case("name: parity_run", "name: ../parity_run"),
    "scaffold-plan-label-slash": _plan_case(f"label: {NAME_F}_parity", "label: ../escape"),
    "scaffold-plan-model-unknown": _plan_case("model: Llama-3.2-1B-Instruct", "model: gpt-5"),
    "scaffold-plan-experiment-dir-relative": _plan_case("experiment_dir: /", "experiment_dir: rel/"),
    "scaffold-plan-names-another-dir": prep(lambda ws: ws.edit_plan(ws.f, f"ck-sanity-checks/{NAME_F}", f"ck-sanity-checks/{NAME_E}"), "scaffold {f}"),
    "scaffold-plan-bit_length-zero": _plan_case("bit_length: 6", "bit_length: 0"),
    "scaffold-plan-val_size-too-big": _plan_case("val_size: 16", "val_size: 500"),
    "scaffold-plan-p-out-of-range": _plan_case("p: 0.0", "p: 1.5"),
    "scaffold-plan-runs-empty": prep(lambda ws: ws.summary(ws.f).write_text(
        ws.summary(ws.f).read_text().split("runs:")[0] + "runs: []\n```\n"), "scaffold {f}"),
    "scaffold-plan-wandb-slash": _plan_case("wandb_project: bit_sequences_2025-10-28", "wandb_project: a/b"),
    "scaffold-output-root-unwritable": prep(lambda ws: ws.edit_plan(ws.f, f"output_root: {ws.root}/scratch/ck-outputs/{NAME_F}",
                                                                    f"output_root: {ws.unwritable()}"), "scaffold {f}"),
    "scaffold-output-root-under-file": prep(lambda ws: ws.edit_plan(ws.f, f"output_root: {ws.root}/scratch/ck-outputs/{NAME_F}", f"output_root: {ws.file}/out"),
             "scaffold {f}"),
    "scaffold-output-root-is-file": prep(lambda ws: ws.edit_plan(ws.f, f"output_root: {ws.root}/scratch/ck-outputs/{NAME_F}",
                                                                 f"output_root: {ws.file}"), "scaffold {f}"),
    "scaffold-data-dir-is-file": prep(lambda ws: ws.edit_plan(ws.f, f"data_dir: {ws.data}", f"data_dir: {ws.file}"), "scaffold {f}"),
    "scaffold-data-dir-unwritable": prep(lambda ws: ws.edit_plan(ws.f, f"data_dir: {ws.data}", f"data_dir: {ws.unwritable()}"), "scaffold {f}"),
    "scaffold-models-dir-is-file-for-embedded-model": prep(lambda ws: (
        ws.edit_plan(ws.f, f"models_dir: {ws.root}/scratch/models", f"models_dir: {ws.file}"),
        ws.summary(ws.f).write_text(ws.summary(ws.f).read_text().replace("model: Llama-3.2-1B-Instruct", "model: ck-tiny-llama")
                                    .replace("gpus: 1", "gpus: 0"))), "scaffold {f}"),
    "scaffold-second-run-dir-is-a-file": prep(lambda ws: (ws.f / "probabilistic_run").write_text("in the way\n"), "scaffold {f}"),
    "scaffold-hand-edited-run-file-conflict": prep(lambda ws: (ws.run / "setup_finetune.yaml").write_text(
        (ws.run / "setup_finetune.yaml").read_text().replace("epochs: 1", "epochs: 2")), "scaffold {e}"),
    "scaffold-dataset-missing": _hand_dataset(None),
    "scaffold-dataset-truncated": _hand_dataset(json.dumps({"train": ROWS, "validation": VAL})[:40]),
    "scaffold-dataset-undecodable": _hand_dataset(b'{"train": "\xff\xfe"}'),
    "scaffold-dataset-empty-file": _hand_dataset(b""),
    "scaffold-dataset-is-list": _hand_dataset(json.dumps([ROWS])),
    "scaffold-dataset-no-validation": _hand_dataset(json.dumps({"train": ROWS})),
    "scaffold-dataset-extra-key": _hand_dataset(json.dumps({"train": ROWS, "validation": VAL, "test": VAL})),
    "scaffold-dataset-row-no-output": _hand_dataset(json.dumps({"train": [{"input": "000001"}], "validation": VAL})),
    "scaffold-dataset-row-number-output": _hand_dataset(json.dumps({"train": [{"input": "000001", "output": 1}], "validation": VAL})),
    "scaffold-dataset-label-outside-set": _hand_dataset(json.dumps({"train": [{"input": "000001", "output": "2"}], "validation": VAL})),
    "scaffold-dataset-splits-overlap": _hand_dataset(json.dumps({"train": ROWS, "validation": [ROWS[0]]})),
    "scaffold-dataset-empty-train": _hand_dataset(json.dumps({"train": [], "validation": VAL})),
    "scaffold-dataset-row-is-string": _hand_dataset(json.dumps({"train": ["000001 1"], "validation": VAL})),
    "scaffold-dataset-is-directory": prep(lambda ws: ws.use_dataset_file(ws.f, None).mkdir(), "scaffold {f}"),
    "scaffold-dataset-not-json-suffix": prep(lambda ws: (ws.use_dataset_file(ws.f, "x").rename(ws.root / "hand" / "data.txt"),
                                                         ws.edit_plan(ws.f, "hand/data.json", "hand/data.txt")), "scaffold {f}"),
}

BAD_STATE = {
    "undecodable": b'{"executor": "\xff"}',
    "truncated": '{"executor": "local", "runs": {"parity_run": {"job_id": "1"',
    "list": "[1, 2, 3]",
    "runs-wrong-type": '{"executor": "local", "runs": 5}',
    "run-unknown-field": '{"executor": "local", "runs": {"parity_run": {"colour": "red"}}}',
    "empty": "",
}


def _state_case(verb: str, content) -> Callable[[WS], list[str]]:
    return prep(lambda ws: ws.state(content), f"{verb} {{e}}")


def _job_table_case(verb: str, content: str | bytes) -> Callable[[WS], list[str]]:
    def fn(ws: WS) -> None:
        ws.state('{"executor": "local", "runs": {"parity_run": {"job_id": "1", "state": "RUNNING"}}}')
        table = ws.e / ".ck-local-jobs"
        table.mkdir()
        (table / "jobs.json").write_bytes(content.encode() if isinstance(content, str) else content)
    return prep(fn, f"{verb} {{e}}")


STATUS_RUN_CASES = {}
for verb in ("status", "run", "summarize"):
    STATUS_RUN_CASES |= {
        f"{verb}-missing-dir": W(f"{verb} {{root}}/nope"),
        f"{verb}-dir-is-file": W(f"{verb} {{file}}"),
        f"{verb}-not-an-experiment": W(f"{verb} {{plain}}"),
        f"{verb}-summary-undecodable": prep(lambda ws: ws.summary().write_bytes(UNDECODABLE), f"{verb} {{e}}"),
        f"{verb}-plan-duplicate-key": _plan_case("kind: sanity_check", "kind: sanity_check\nkind: sanity_check", "e", verb),
        f"{verb}-plan-not-yaml": _plan_case("kind: sanity_check", "kind: [", "e", verb),
    }
    if verb != "summarize":
        STATUS_RUN_CASES |= {f"{verb}-state-{kind}": _state_case(verb, content) for kind, content in BAD_STATE.items()}
STATUS_RUN_CASES |= {
    "status-job-table-truncated": _job_table_case("status", '{"next_id": 2, "jobs": {'),
    "status-job-table-wrong-shape": _job_table_case("status", '{"next_id": 2, "jobs": [1]}'),
    "status-job-table-undecodable": _job_table_case("status", b'{"next_id": 2, "jobs": "\xff"}'),
    "run-not-scaffolded": W("run {f}"),
    "run-max-submit-zero": W("run {e} --max-submit 0"),
    "summarize-metrics-corrupt-line": prep(lambda ws: _metrics(ws).write_text('{"event": "train"\n{"event": "val"}\n'), "summarize {e}"),
    "summarize-metrics-undecodable": prep(lambda ws: _metrics(ws).write_bytes(b'{"event": "\xff"}\n'), "summarize {e}"),
    "summarize-dataset-truncated": prep(lambda ws: _dataset(ws).write_text('{"train": ['), "summarize {e}"),
    "summarize-dataset-wrong-shape": prep(lambda ws: _dataset(ws).write_text('{"rows": []}'), "summarize {e}"),
    "summarize-dataset-undecodable": prep(lambda ws: _dataset(ws).write_bytes(b"\xff\xfe"), "summarize {e}"),
}


def _metrics(ws: WS) -> Path:
    return ws.root / "scratch" / "ck-outputs" / NAME_E / "ck-out-parity_run" / "logs" / "metrics.jsonl"


def _dataset(ws: WS) -> Path:
    return ws.data / f"{NAME_E}_parity.json"


def _settings_case(content, argv: str = "config show") -> Callable[[WS], list[str]]:
    return prep(lambda ws: ws.settings.write_bytes(content.encode() if isinstance(content, str) else content), argv)


CONFIG_CASES = {
    "config-set-unknown-key": W("config set scrach /tmp"),
    "config-set-data_dir-is-file": W("config set data_dir {file}"),
    "config-set-scratch-under-file": W("config set scratch {file}/s"),
    "config-set-models_dir-is-file": W("config set models_dir {file}"),
    "config-set-scratch-empty": W("config set scratch <empty>"),
    "config-set-max_local_jobs-zero": W("config set max_local_jobs 0"),
    "config-set-max_local_jobs-word": W("config set max_local_jobs many"),
    "config-set-executor-bogus": W("config set executor cloud"),
    "config-set-slurm_time-bad": W("config set slurm_time 99"),
    "config-set-slurm_time-zero": W("config set slurm_time 00:00:00"),
    "config-set-slurm_mem-zero": W("config set slurm_mem 0"),
    "config-set-slurm_mem-word": W("config set slurm_mem lots"),
    "config-set-modules-shell": W("config set modules a;rm,b"),
    "config-set-modules-space-in-name": lambda ws: ["config", "set", "modules", "anaconda3/2024.6,cuda 12"],
    "config-set-wandb-slash": W("config set wandb_project a/b"),
    "config-set-llm_timeout-zero": W("config set llm_timeout 0"),
    "config-set-llm_max_retries-negative": W("config set llm_max_retries -1"),
    "config-set-llm_model-empty": W("config set llm_model <empty>"),
    "config-unset-unknown-key": W("config unset scrach"),
    "config-show-settings-undecodable": _settings_case(UNDECODABLE),
    "config-show-settings-duplicate-key": _settings_case("slurm_account: a\nslurm_account: b\n"),
    "config-show-settings-list": _settings_case("- a\n- b\n"),
    "config-show-settings-not-yaml": _settings_case("slurm_account: [a\n"),
    "config-show-settings-unknown-key": _settings_case("scrach: /tmp\n"),
    "config-show-settings-bad-value": _settings_case("max_local_jobs: 0\n"),
    "config-show-settings-modules-shell": _settings_case("modules: a;b\n"),
    "config-show-settings-executor-list": _settings_case("executor: [local]\n"),
    "config-show-settings-is-directory": prep(lambda ws: (ws.settings.unlink(), ws.settings.mkdir()), "config show"),
    "config-set-settings-corrupt": _settings_case(UNDECODABLE, "config set slurm_account x"),
    "config-set-settings-duplicate": _settings_case("venv: a\nvenv: b\n", "config set slurm_account x"),
}


def _config_elsewhere(where: str) -> Callable[[WS], list[str]]:
    def case(ws: WS) -> list[str]:
        os.environ["CK_CONFIG"] = where.format(file=ws.file, unw=ws.unwritable()) + "/settings.yaml"
        return ["config", "set", "slurm_account", "x"]
    return case


CONFIG_CASES |= {
    "config-set-settings-dir-is-file": _config_elsewhere("{file}"),
    "config-set-settings-dir-unwritable": _config_elsewhere("{unw}"),
}

LOG_CASES = {
    "log-missing-dir": W("log {root}/nope DECIDE x"),
    "log-not-an-experiment": W("log {plain} DECIDE x"),
    "log-dir-is-file": W("log {file} DECIDE x"),
    "log-action-lowercase": W("log {e} decide_things x"),
    "log-action-empty": W("log {e} <empty> x"),
    "log-log-file-is-a-directory": prep(lambda ws: (ws.e / "design-experiment.log").mkdir(), "log {e} DECIDE x"),
    "keys-json-and-markdown": W("keys --json --markdown"),
    "models-verify-missing-dir": W("models verify {root}/nope"),
    "models-verify-dir-is-file": W("models verify {file}"),
    "models-verify-unknown-model": W("models verify {plain} --model gpt-5"),
    "models-tiny-models-dir-is-file": W("models tiny --models-dir {file}"),
    "models-tiny-models-dir-unwritable": W("models tiny --models-dir {unw}"),
    "models-list-models-dir-is-file": W("models list --models-dir {file}"),
    "sanity-check-scratch-is-file": W("sanity-check bit-sequences --scratch {file}"),
    "sanity-check-name-slash": W("sanity-check bit-sequences --scratch {root}/scratch --name ../x"),
    "sanity-check-settings-corrupt": _settings_case(UNDECODABLE, "sanity-check bit-sequences --scratch {root}/scratch"),
}


def _setup_case(old: str, new: str, *flags: str) -> Callable[[WS], list[str]]:
    def case(ws: WS) -> list[str]:
        path = ws.run / "setup_finetune.yaml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
        return ["renderer", "--run_dir", str(ws.run), *flags]
    return case


def _setup_bytes(content: bytes) -> Callable[[WS], list[str]]:
    def case(ws: WS) -> list[str]:
        (ws.run / "setup_finetune.yaml").write_bytes(content)
        return ["renderer", "--run_dir", str(ws.run)]
    return case


RENDERER_CASES = {
    "render-setup-undecodable": _setup_bytes(UNDECODABLE),
    "render-setup-truncated": _setup_bytes(b"my_wandb_project: 'unterminated\n"),
    "render-setup-list": _setup_bytes(b"- a\n- b\n"),
    "render-setup-scalar": _setup_bytes(b"just words\n"),
    "render-setup-duplicate-key": _setup_case("epochs: 1", "epochs: 1\nepochs: 3"),
    "render-setup-duplicate-via-alias": _setup_case("model: Llama-3.2-1B-Instruct", "model: Llama-3.2-1B-Instruct\ntorchtune_model_name: Llama-3.2-1B-Instruct"),
    "render-setup-unknown-key": _setup_case("epochs: 1", "epochs: 1\nepoch: 3"),
    "render-setup-lr-word": _setup_case("lr: 0.003", "lr: fast"),
    "render-setup-lr-negative": _setup_case("lr: 0.003", "lr: -1"),
    "render-setup-lr-nan": _setup_case("lr: 0.003", "lr: .nan"),
    "render-setup-epochs-zero": _setup_case("epochs: 1", "epochs: 0"),
    "render-setup-epochs-float": _setup_case("epochs: 1", "epochs: 1.5"),
    "render-setup-batch_size-list": _setup_case("batch_size: 4", "batch_size: [4]"),
    "render-setup-gpus-negative": _setup_case("gpus: 1", "gpus: -1"),
    "render-setup-time-bad": _setup_case("time: 00:10:00", "time: 99:99:99"),
    "render-setup-mem-bad": _setup_case("mem: 4G", "mem: four"),
    "render-setup-lora_rank-zero": _setup_case("lora_rank: 8", "lora_rank: 0"),
    "render-setup-dataset_label-space": _setup_case(f"dataset_label: {NAME_E}_parity", "dataset_label: my data"),
    "render-setup-dataset_label-slash": _setup_case(f"dataset_label: {NAME_E}_parity", "dataset_label: ../x"),
    "render-setup-run-name-empty": _setup_case("my_wandb_run_name: parity_run", "my_wandb_run_name: ''"),
    "render-setup-run-name-newline": _setup_case("my_wandb_run_name: parity_run", 'my_wandb_run_name: "a\\nb"'),
    "render-setup-model-unknown": _setup_case("model: Llama-3.2-1B-Instruct", "model: gpt-5"),
    "render-setup-recipe-missing": _setup_case("custom_recipe: cruijff_kit.", "custom_recipe: nope_pkg."),
    "render-flag-lr-nan": _setup_case("epochs: 1", "epochs: 1", "--lr", "nan"),
    "render-flag-epochs-word": _setup_case("epochs: 1", "epochs: 1", "--epochs", "x"),
    "render-flag-unknown": _setup_case("epochs: 1", "epochs: 1", "--lora_rnak", "4"),
    "render-config-file-missing": _setup_case("epochs: 1", "epochs: 1", "--config_file", "/nope/setup.yaml"),
    "render-config-file-directory": _setup_case("epochs: 1", "epochs: 1", "--config_file", "/tmp"),
    "render-run-dir-unwritable": lambda ws: ["renderer", "--run_dir", ws.unwritable(), "--config_file", str(ws.run / "setup_finetune.yaml")],
    "render-run-dir-is-file": lambda ws: ["renderer", "--run_dir", str(ws.file), "--config_file", str(ws.run / "setup_finetune.yaml")],
}

CASES: dict[str, Callable[[WS], list[str]]] = {
    **GENERATE_CASES, **DESIGN_CASES, **SCAFFOLD_CASES, **STATUS_RUN_CASES, **CONFIG_CASES, **LOG_CASES, **RENDERER_CASES,
}
ARGPARSE_CASES = {"keys-json-and-markdown", "run-max-submit-zero"}  # usage line + error line, from argparse itself


def test_there_are_enough_cases():
    assert len(CASES) >= 150


def _run(argv: list[str], cwd: Path, capsys) -> tuple[int, str]:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        if argv[0] == "renderer":
            code = setup_finetune.main(argv[1:])
        else:
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        os.chdir(old)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, template, tmp_path, monkeypatch, capsys):
    root = tmp_path / "ws"
    _copy(template, root)
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    ws = WS(root)
    argv = CASES[case](ws)
    before = snapshot(root)
    code, err = _run(argv, root, capsys)
    lines = err.strip("\n").splitlines()
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    if case in ARGPARSE_CASES:
        assert lines[-1].startswith("ck ") and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1, err
        assert ": error: " in lines[0] and "fix: " in lines[0], err
    assert snapshot(root) == before


# ---------------------------------------------------------------------------------------------- messages


def _one_line(case: str, template, tmp_path, monkeypatch, capsys) -> str:
    root = tmp_path / "ws"
    _copy(template, root)
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    code, err = _run(CASES[case](WS(root)), root, capsys)
    assert code == 2
    return err.strip()


@pytest.mark.parametrize("case, must_say", [
    ("scaffold-plan-duplicate-key", "key given twice (lines"),
    ("scaffold-plan-is-a-list", "must be a YAML mapping"),
    ("design-lr-nan", "lr=nan"),
    ("config-set-data_dir-is-file", "data_dir="),
    ("render-setup-dataset_label-space", "dataset_label='my data'"),
    ("scaffold-dataset-label-outside-set", "train[0]"),
    ("gen-replace-dataset-a-run-reads", "--force"),
    ("status-not-an-experiment", "is not an experiment"),
    ("scaffold-output-root-unwritable", "output directory"),
])
def test_messages_name_what_the_user_wrote(case, must_say, template, tmp_path, monkeypatch, capsys):
    assert must_say in _one_line(case, template, tmp_path, monkeypatch, capsys)


def test_plan_errors_do_not_say_dict(template, tmp_path, monkeypatch, capsys):
    line = _one_line("scaffold-plan-runs-empty", template, tmp_path, monkeypatch, capsys)
    assert "'dict'" not in line and "runs" in line


def test_plan_yaml_errors_give_the_files_line(template, tmp_path, monkeypatch, capsys):
    root = tmp_path / "ws"
    _copy(template, root)
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    ws = WS(root)
    ws.edit_plan(ws.f, "kind: sanity_check", "kind: sanity_check\nkind: experiment")
    lines = ws.summary(ws.f).read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line == "kind: sanity_check") + 1
    code, err = _run(["scaffold", str(ws.f)], root, capsys)
    assert code == 2 and f"lines {first} and {first + 1}" in err


# ---------------------------------------------------------------------------------------------- nothing destroyed


def _gen_argv(out_dir: Path, parity: str = "True") -> list[str]:
    return ["generate", "bit-sequences", "--bit_length", "6", "--N", "200", "--val_size", "16",
            "--bit_parity", parity, "--output", "g.json", "--output_dir", str(out_dir)]


def test_generate_identical_is_a_no_op_and_a_different_one_says_so(tmp_path, capsys):
    out = tmp_path / "gen"
    assert cli.main(_gen_argv(out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert cli.main(_gen_argv(out)) == 0
    assert "unchanged" in capsys.readouterr().out and snapshot(out) == before
    assert cli.main(_gen_argv(out, "False")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("replacing ") and "'bit_parity': True" in err[0] \
        and "'bit_parity': False" in err[0]
    assert snapshot(out) != before


def test_generate_force_replaces_a_dataset_a_run_reads(template, tmp_path, monkeypatch, capsys):
    root = tmp_path / "ws"
    _copy(template, root)
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    argv = CASES["gen-replace-dataset-a-run-reads"](WS(root))
    assert cli.main(argv + ["--force"]) == 0
    assert json.loads((root / "data" / f"{NAME_E}_parity.json.provenance.json").read_text())["arguments"]["bit_parity"] is False


def test_scaffold_failing_half_way_puts_everything_back(template, tmp_path, monkeypatch, capsys):
    """The second run's directory cannot be made: the first run's files, the datasets and the plan are undone."""
    root = tmp_path / "ws"
    _copy(template, root)
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    ws = WS(root)
    (ws.f / "probabilistic_run").write_text("in the way\n")
    before = snapshot(root)
    code, err = _run(["scaffold", str(ws.f)], root, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert snapshot(root) == before
    assert not (ws.f / "parity_run").exists()
    log = (ws.f / "scaffold-experiment.log").read_text()
    assert log.count("SCAFFOLD_FAILED") == 1


def test_design_force_plans_into_a_non_experiment_directory(template, tmp_path, monkeypatch, capsys):
    root = tmp_path / "ws"
    _copy(template, root)
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    argv = CASES["design-into-non-experiment-dir"](WS(root))
    assert cli.main(argv + ["--force"]) == 0
    assert (root / "scratch" / "ck-sanity-checks" / "new_exp" / "experiment_summary.md").is_file()


# ---------------------------------------------------------------------------------------------- as a user runs them


@pytest.mark.parametrize("argv", [
    ["status", "{plain}"],
    ["config", "set", "data_dir", "{file}"],
    ["scaffold", "{f}", "--no-progress"],
])
def test_subprocess_one_line_exit_2(argv, template, tmp_path):
    root = tmp_path / "ws"
    _copy(template, root)
    ws = WS(root)
    (ws.summary(ws.f)).write_bytes(UNDECODABLE)
    env = {**os.environ, **_env(root)}
    before = snapshot(root)
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit", *[a.format(plain=ws.plain, file=ws.file, f=ws.f) for a in argv]],
                          capture_output=True, text=True, env=env, cwd=root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(root) == before


def test_renderer_as_the_seed_runs_it_refuses_a_duplicated_key(template, tmp_path):
    root = tmp_path / "ws"
    _copy(template, root)
    ws = WS(root)
    setup = ws.run / "setup_finetune.yaml"
    setup.write_text(setup.read_text() + "epochs: 3\n")
    before = snapshot(root)
    proc = subprocess.run([sys.executable, "-m", "cruijff_kit.tools.torchtune.setup_finetune"], capture_output=True,
                          text=True, env={**os.environ, **_env(root)}, cwd=ws.run)
    assert proc.returncode == 2 and "key given twice" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(root) == before
