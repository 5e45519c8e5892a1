"""Design an experiment from a sentence: `ck design --describe "..." [--check NAME]`.

The Anthropic Messages API is asked, through the `anthropic` SDK, to call one tool whose input
schema is generated from the plan model (`Experiment.model_json_schema()`, minus the fields the
toolkit fills in, with the check's generator-arguments model as `dataset.generator`); the check's
own words (`Check.prompt_words`) tell the model what the task and the arguments are. The proposal is validated with the plan model itself; on errors the model gets
them back as an `is_error` tool_result and may correct the plan, for at most `llm_max_rounds`
rounds. The accepted plan is shown as the runs table, confirmed, and written through
`design.write_experiment` — the same path as `ck design CHECK`.

Every failure (no key, no network, refusal, rate limits or server errors after the SDK's retries,
a timeout, a plan still invalid after the last round, a declined confirmation) is one CkError
naming the flag-based way, and nothing is written: the LLM_* log entries are kept in memory and
go into design-experiment.log only together with the plan.

The API key is read by the SDK from ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL likewise) and never
passes through this module's logs or files.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from cruijff_kit import explog
from cruijff_kit.checks import Check as SanityCheck
from cruijff_kit.checks import get_check, registered
from cruijff_kit.design import Check, build_plan, planned_dataset, print_plan, write_experiment, written_message
from cruijff_kit.errors import CkError
from cruijff_kit.experiment import Experiment, field_path
from cruijff_kit.settings import KEYS as SETTING_KEYS
from cruijff_kit.settings import Settings, load_settings

if TYPE_CHECKING:
    import anthropic

TOOL_NAME = "propose_experiment_plan"
def flag_way() -> str:
    """How to design without the LLM, naming the registered checks."""
    names = [n.replace("_", "-") for n in registered()] or ["CHECK"]
    return ("or design it with flags: " + " or ".join(f"`ck design {n} ...`" for n in names)
            + " (see `ck design CHECK --help`)")

# Plan fields the toolkit fills in (paths, dates, derived values): not part of the tool's schema.
TOOLKIT_FIELDS: dict[str, tuple[str, ...]] = {
    "Experiment": ("name", "kind", "date", "experiment_dir", "output_root", "models_dir", "data_dir", "wandb_project"),
    "RunPlan": ("expected",),
    "DatasetPlan": ("label", "ext", "check", "path"),
}
# Plan fields the proposal may leave out: the preset's value is used. "*" = every field.
PRESET_FILLED: dict[str, tuple[str, ...]] = {
    "RunPlan": ("model", "hyper", "compute"),
    "Hyper": ("*",),
    "Compute": ("*",),
}
# Optional in the plan model but needed in a proposal.
PROPOSAL_REQUIRED: dict[str, tuple[str, ...]] = {"DatasetPlan": ("generator",)}
# Object descriptions that would mention fields the proposal does not have.
PROPOSAL_DESCRIPTIONS = {
    "DatasetPlan": "The run's dataset, generated from `generator`; cruijff_kit chooses its file name.",
}


def _default(key: str) -> Any:
    return SETTING_KEYS[key].default({})


@dataclass(frozen=True)
class LlmOptions:
    """The llm_* settings; defaults and checks are settings.py's."""

    model: str = _default("llm_model")
    max_tokens: int = _default("llm_max_tokens")
    timeout_s: float = _default("llm_timeout")
    max_retries: int = _default("llm_max_retries")   # the SDK's retries of 408/409/429/5xx/timeouts
    max_rounds: int = _default("llm_max_rounds")     # proposals, counting the first

    @classmethod
    def from_settings(cls, settings: Settings) -> "LlmOptions":
        """`settings` may be any object with llm_* attributes; a missing one takes its default."""
        keys = ("llm_model", "llm_max_tokens", "llm_timeout", "llm_max_retries", "llm_max_rounds")
        return cls(*(SETTING_KEYS[k].parse(getattr(settings, k), k) if hasattr(settings, k) else _default(k)
                     for k in keys))


# ---------------------------------------------------------------- the tool schema, generated from the plan model


def _referenced_defs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            found.add(ref.removeprefix("#/$defs/"))
        for value in node.values():
            _referenced_defs(value, found)
    elif isinstance(node, list):
        for value in node:
            _referenced_defs(value, found)


def default_check(name: str | None = None) -> SanityCheck:
    """The check named, or the only registered one."""
    if name is not None:
        return get_check(name, "--check")
    checks = list(registered().values())
    if len(checks) != 1:
        raise CkError("--check", "(not given)", f"{len(checks)} checks are registered ({', '.join(registered())})",
                      "name the one to design with --check NAME")
    return checks[0]


def proposal_schema(check: SanityCheck | None = None, preset: str | None = None) -> dict[str, Any]:
    """`Experiment.model_json_schema()` less TOOLKIT_FIELDS, with PRESET_FILLED made optional, and the
    check's generator-arguments model as `dataset.generator` (what the preset supplies made optional)."""
    check = check or default_check()
    preset = preset or check.default_preset
    schema = copy.deepcopy(Experiment.model_json_schema())
    defs = schema.setdefault("$defs", {})
    args_schema = copy.deepcopy(check.Args.model_json_schema())
    args_title = args_schema.get("title", check.Args.__name__)
    defs.update(args_schema.pop("$defs", {}))
    defs[args_title] = args_schema
    defs["DatasetPlan"]["properties"]["generator"] = {"$ref": f"#/$defs/{args_title}"}
    preset_filled = dict(PRESET_FILLED)
    preset_filled[args_title] = tuple(check.run_defaults(preset, None, {}))
    objects = {"Experiment": schema, **defs}
    for title, obj in objects.items():
        props = obj.get("properties", {})
        for key in TOOLKIT_FIELDS.get(title, ()):
            props.pop(key, None)
        optional = preset_filled.get(title, ())
        required = [k for k in obj.get("required", []) if k in props and "*" not in optional and k not in optional]
        required += [k for k in PROPOSAL_REQUIRED.get(title, ()) if k not in required]
        if required:
            obj["required"] = required
        else:
            obj.pop("required", None)
        description = PROPOSAL_DESCRIPTIONS.get(title, obj.get("description", ""))
        if optional:
            description += " Fields left out take the preset's value (listed in the instructions)."
        if description.strip():
            obj["description"] = description.strip()
    used: set[str] = set()
    _referenced_defs({k: v for k, v in schema.items() if k != "$defs"}, used)
    while True:  # defs used by used defs
        more: set[str] = set()
        for name in used:
            _referenced_defs(defs.get(name, {}), more)
        if more <= used:
            break
        used |= more
    schema["$defs"] = {name: d for name, d in defs.items() if name in used}
    if check.sweep_variables:
        schema["properties"]["sweep"] = sweep_schema(check)
        schema["required"] = [k for k in schema.get("required", []) if k != "runs"]
    schema["title"] = "ExperimentProposal"
    schema["description"] = (f"The runs of a {check.name} fine-tuning experiment and its purpose. Directories, "
                             "dates, dataset file names and expected results are filled in by cruijff_kit.")
    return schema


def sweep_schema(check: SanityCheck) -> dict[str, Any]:
    """A grid in a few tokens: variables with lists of values (and seeds) instead of one run per combination."""
    fields = check.Args.model_fields
    variables = {dest: {"type": "array", "minItems": 1,
                        "items": {"type": "number"} if dest not in fields or fields[dest].annotation in (int, float)
                        else {}}
                 for dest in check.sweep_variables}
    return {
        "type": "object",
        "description": "A sweep: each preset run repeated for every combination of the listed values (the product) "
                       "and for each of `seeds` training seeds; cruijff_kit names the runs after the values. Use it "
                       "instead of listing runs one by one whenever the request is a grid; `runs` may then be left "
                       "out, or add runs beyond the grid.",
        "properties": {"variables": {"type": "object", "properties": variables, "additionalProperties": False},
                       "seeds": {"type": "integer", "minimum": 1}},
        "additionalProperties": False,
    }


def _sweep_proposal_runs(sweep: Any, skeleton: Experiment, preset: str, check: SanityCheck) -> tuple[list, list[str]]:
    """The runs of a proposal's `sweep` (as proposal runs), or the problems with it."""
    from cruijff_kit.design import sweep_runs

    if not isinstance(sweep, dict) or set(sweep) - {"variables", "seeds"}:
        return [], ["sweep: must be an object with `variables` (name -> list of values) and optional `seeds`"]
    variables, seeds = sweep.get("variables") or {}, sweep.get("seeds")
    problems = [f"sweep.variables.{k}: not a sweep variable (use one of {', '.join(check.sweep_variables)})"
                for k in variables if k not in check.sweep_variables]
    problems += [f"sweep.variables.{k}: must be a non-empty list (got {json.dumps(v, default=str)[:40]})"
                 for k, v in variables.items() if not isinstance(v, list) or not v]
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        problems.append(f"sweep.seeds: must be a whole number >= 1 (got {seeds!r})")
    if problems:
        return [], problems
    try:
        made = sweep_runs(check, check.presets[preset]["runs"], {k: list(v) for k, v in variables.items()}, seeds)
    except CkError as err:
        return [], [f"sweep: {err}"]
    base_seed = skeleton.runs[0].hyper.seed
    return [{"name": name, "dataset": {"generator": args}}
            | ({"hyper": {"seed": base_seed + index - 1}} if index is not None else {})
            for name, args, index in made], []


def tool_definition(check: SanityCheck | None = None, preset: str | None = None) -> dict[str, Any]:
    return {
        "name": TOOL_NAME,
        "description": "Propose the complete experiment plan (every run, and the purpose). Call it once per "
                       "turn with the whole plan; if it comes back with errors, call it again with the "
                       "corrected whole plan.",
        "input_schema": proposal_schema(check, preset),
    }


def system_prompt(preset: str, skeleton: Experiment, check: SanityCheck | None = None) -> str:
    check = check or default_check()
    run = skeleton.runs[0]
    defaults = {"model": run.model, "hyper": run.hyper.model_dump(), "compute": run.compute.model_dump()}
    for run_name in check.presets[preset]["runs"]:
        defaults[f"dataset.generator (like run {run_name})"] = check.run_defaults(preset, run_name, {})
    return (
        f"You design fine-tuning sanity checks for cruijff_kit, check `{check.name}`. {check.prompt_words}\n"
        f"Turn the user's request into runs by calling {TOOL_NAME} with the complete plan: one run per combination "
        "the request asks for, each with a unique name of letters, digits and underscores that says what it varies, "
        "and a one-paragraph purpose. Leave out every field the request does not ask to change: the preset "
        "supplies it. Never invent paths.\n"
        f"Preset `{preset}` values used for fields you leave out:\n{json.dumps(defaults, indent=1)}"
    )


# ---------------------------------------------------------------- proposal -> plan


class ProposalInvalid(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _problems(exc: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] == "missing" else f" (got {json.dumps(err.get('input'), default=str)[:80]})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field, not part of the plan"
        out.append(f"{field_path(tuple(err['loc']), prefix) or '(plan)'}: {msg}{got}")
    return out


def plan_from_proposal(proposal: Any, skeleton: Experiment, preset: str, check: SanityCheck | None = None) -> Experiment:
    """Fill the toolkit's fields in from `skeleton` (the preset's plan) and validate with the plan model.

    Raises ProposalInvalid listing every problem, each as `path: message (got value)`.
    """
    check = check or default_check()
    if not isinstance(proposal, dict):
        raise ProposalInvalid([f"(plan): must be an object with purpose and runs (got {type(proposal).__name__})"])
    problems = [f"{key}: set by cruijff_kit, leave it out" for key in TOOLKIT_FIELDS["Experiment"] if key in proposal]
    base_run = skeleton.runs[0]
    proposal = dict(proposal)
    if "sweep" in proposal:
        swept, sweep_problems = _sweep_proposal_runs(proposal.pop("sweep"), skeleton, preset, check)
        problems += sweep_problems
        given = proposal.get("runs", [])
        proposal["runs"] = swept + (given if isinstance(given, list) else [])
    elif "runs" not in proposal:
        problems.append("runs: missing; list the runs, or give a sweep")
    runs = proposal.get("runs")
    built_runs: Any = runs
    if isinstance(runs, list):
        built_runs = []
        for i, run in enumerate(runs):
            where = f"runs[{i}]"
            if not isinstance(run, dict):
                built_runs.append(run)  # the plan model says what is wrong with it
                continue
            run = dict(run)
            problems += [f"{where}.{key}: set by cruijff_kit, leave it out"
                         for key in TOOLKIT_FIELDS["RunPlan"] if key in run]
            dataset = run.get("dataset")
            if not isinstance(dataset, dict) or not isinstance(dataset.get("generator"), dict):
                required = [k for k, f in check.Args.model_fields.items() if f.is_required()
                            and k not in check.run_defaults(preset, None, {})]
                problems.append(f"{where}.dataset.generator: missing; give at least {', '.join(required) or 'an empty object'}")
                continue
            problems += [f"{where}.dataset.{key}: set by cruijff_kit, leave it out"
                         for key in TOOLKIT_FIELDS["DatasetPlan"] if key in dataset]
            try:
                # what a proposed run leaves out: the same rule as `--add-run`
                defaults = check.run_defaults(preset, run.get("name"), dataset["generator"])
                generator = check.Args.model_validate(defaults | dataset["generator"])
            except ValidationError as exc:
                problems += _problems(exc, f"{where}.dataset.generator")
                continue
            rest = {k: v for k, v in dataset.items() if k != "generator" and k not in TOOLKIT_FIELDS["DatasetPlan"]}
            planned, expected = planned_dataset(check, preset, str(run.get("name")), generator.model_dump(),
                                                f"{where}.dataset.generator")
            run["dataset"] = planned | rest
            run.setdefault("model", base_run.model)
            for part, base in (("hyper", base_run.hyper), ("compute", base_run.compute)):
                given = run.get(part, {})
                run[part] = base.model_dump() | given if isinstance(given, dict) else given
            run["expected"] = expected
            built_runs.append(run)
    if problems:
        raise ProposalInvalid(problems)

    data = {k: v for k, v in skeleton.model_dump(mode="json").items() if k in TOOLKIT_FIELDS["Experiment"]}
    data |= {k: v for k, v in proposal.items() if k not in TOOLKIT_FIELDS["Experiment"]}
    if "runs" in proposal:
        data["runs"] = built_runs
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise ProposalInvalid(_problems(exc)) from None


# ---------------------------------------------------------------- the conversation


@dataclass
class PendingEntry:
    action: str
    description: str
    result: str = ""
    explanation: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    when: _dt.datetime = field(default_factory=_dt.datetime.now)


@dataclass
class LlmDesign:
    experiment: Experiment
    model_id: str          # the model that answered (the response's `model`)
    rounds: int
    log: list[PendingEntry]


def _redact(text: object) -> str:
    """Belt and braces: no key ever reaches a message, even if a server echoed it."""
    text = str(text)
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def _llm_error(field_name: str, value: object, problem: str, fix: str = "") -> CkError:
    return CkError(field_name, _redact(value), _redact(problem), f"{fix}; {flag_way()}" if fix else flag_way())


def _make_client(options: LlmOptions) -> "anthropic.Anthropic":
    import anthropic

    try:
        client = anthropic.Anthropic(timeout=options.timeout_s, max_retries=options.max_retries)
    except anthropic.AnthropicError as exc:  # e.g. ANTHROPIC_PROFILE naming a profile that is not there
        raise _llm_error("ANTHROPIC_API_KEY", "(unset)", f"no usable Anthropic credentials ({exc})",
                         "export ANTHROPIC_API_KEY=...") from None
    if client.api_key is None and client.auth_token is None and client.credentials is None:
        raise _llm_error("ANTHROPIC_API_KEY", "(unset)", "no Anthropic API key to design from a description",
                         "export ANTHROPIC_API_KEY=...")
    return client


def _create(client: "anthropic.Anthropic", options: LlmOptions, **request: Any):
    """One messages.create (the SDK retries 429/5xx/timeouts itself); failures become CkErrors."""
    import anthropic

    tries = f"after {options.max_retries + 1} attempt(s)"
    try:
        return client.messages.create(model=options.model, max_tokens=options.max_tokens, **request)
    except anthropic.APITimeoutError:
        raise _llm_error("llm_timeout", options.timeout_s, f"the Anthropic API did not answer in time {tries}",
                         "raise llm_timeout or try again later") from None
    except anthropic.APIConnectionError as exc:
        raise _llm_error("ANTHROPIC_BASE_URL", str(client.base_url), f"cannot reach the Anthropic API {tries} ({exc})",
                         "check the network / ANTHROPIC_BASE_URL") from None
    except anthropic.AuthenticationError as exc:
        raise _llm_error("ANTHROPIC_API_KEY", "(set)", f"the API rejected the key (HTTP {exc.status_code})",
                         "check ANTHROPIC_API_KEY") from None
    except anthropic.RateLimitError:
        raise _llm_error("llm_max_retries", options.max_retries,
                         f"rate-limited by the Anthropic API (HTTP 429) {tries}",
                         "wait and try again, or raise llm_max_retries") from None
    except anthropic.InternalServerError as exc:
        raise _llm_error("Anthropic API", f"HTTP {exc.status_code}", f"server error {tries}: {_api_message(exc)}",
                         "try again later") from None
    except anthropic.APIStatusError as exc:
        raise _llm_error("Anthropic API", f"HTTP {exc.status_code}", f"request refused: {_api_message(exc)}",
                         f"check llm_model ({options.model}) and llm_max_tokens") from None
    except anthropic.CredentialsError as exc:  # a profile or federation setup that does not work
        raise _llm_error("ANTHROPIC_API_KEY", "(unset)", f"no usable Anthropic credentials ({exc})",
                         "export ANTHROPIC_API_KEY=...") from None


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:200]
    return str(exc)[:200]


def propose_plan(
    request_text: str,
    *,
    settings: Settings,
    preset: str | None = None,
    name: str | None = None,
    options: LlmOptions | None = None,
    client: "anthropic.Anthropic | None" = None,
    today: _dt.date | None = None,
    check: SanityCheck | str | None = None,
) -> LlmDesign:
    """Ask the model for a plan and validate it, re-asking with the errors for up to max_rounds rounds."""
    check = check if isinstance(check, SanityCheck) else default_check(check)
    preset = preset or check.default_preset
    request_text = request_text.strip()
    if not request_text:
        example = getattr(check, "describe_example", "") or "what to vary across runs"
        raise CkError("--describe", request_text, "empty description", f'say what to compare, e.g. --describe "{example}"')
    options = options or LlmOptions.from_settings(settings)
    skeleton = build_plan(check, preset, settings=settings, name=name, today=today)
    client = client or _make_client(options)

    log = [PendingEntry("LLM_REQUEST", request_text,
                        result=f"model {options.model}, max_tokens {options.max_tokens}, "
                               f"timeout {options.timeout_s:g} s, {options.max_retries} retries, "
                               f"at most {options.max_rounds} rounds",
                        explanation=f"tool {TOOL_NAME} forced; its input schema is the plan model's JSON schema less "
                                    f"the fields cruijff_kit fills in; preset {preset} supplies left-out values")]
    messages: list[dict[str, Any]] = [{"role": "user", "content": request_text}]
    request = {"system": system_prompt(preset, skeleton, check), "tools": [tool_definition(check, preset)],
               "tool_choice": {"type": "tool", "name": TOOL_NAME}}
    last_problems: list[str] = []
    for round_no in range(1, options.max_rounds + 1):
        response = _create(client, options, messages=messages, **request)
        uses = [b for b in response.content if b.type == "tool_use"]
        stats = {"Message ID": response.id, "Model": response.model, "Stop reason": response.stop_reason,
                 "Tokens": f"{response.usage.input_tokens} in, {response.usage.output_tokens} out"}
        if response.stop_reason == "refusal":
            raise _llm_error("--describe", request_text[:60], f"{response.model} declined to propose a plan (refusal)")
        if response.stop_reason == "max_tokens":
            raise _llm_error("llm_max_tokens", options.max_tokens, f"{response.model}'s answer was cut off",
                             "raise llm_max_tokens")
        mine = [b for b in uses if b.name == TOOL_NAME]
        if not mine:
            said = " ".join(b.text for b in response.content if b.type == "text")[:120]
            raise _llm_error("--describe", request_text[:60],
                             f"{response.model} answered without a plan (stop_reason {response.stop_reason})"
                             + (f": {said!r}" if said else ""), "rephrase the description")
        try:
            experiment = plan_from_proposal(mine[0].input, skeleton, preset, check)
        except ProposalInvalid as exc:
            last_problems = exc.problems
            log.append(PendingEntry("LLM_VALIDATE", f"round {round_no} of {options.max_rounds}: invalid proposal",
                                    result=f"{len(exc.problems)} problem(s): " + "; ".join(exc.problems),
                                    explanation="sent back as an is_error tool_result" if round_no < options.max_rounds
                                    else "last round", extra=stats))
            feedback = ("The plan is not valid:\n" + "\n".join(f"- {p}" for p in exc.problems)
                        + f"\nCall {TOOL_NAME} again with the corrected complete plan.")
            messages += [
                response.to_param(),
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b.id, "is_error": True,
                                              "content": feedback if b is mine[0] else "ignored: one plan per turn"}
                                             for b in uses]},
            ]
            continue
        log.append(PendingEntry("LLM_VALIDATE", f"round {round_no} of {options.max_rounds}: valid proposal",
                                result=f"{len(experiment.runs)} runs: {', '.join(r.name for r in experiment.runs)}",
                                explanation="validated with the plan model (Experiment)", extra=stats))
        return LlmDesign(experiment, response.model, round_no, log)

    raise _llm_error("llm_max_rounds", options.max_rounds,
                     f"the proposed plan was still invalid after {options.max_rounds} round(s): "
                     + "; ".join(last_problems[:3]) + (" ..." if len(last_problems) > 3 else ""),
                     "rephrase the description or raise llm_max_rounds")


def design_from_description(
    request_text: str,
    *,
    settings: Settings | None = None,
    preset: str | None = None,
    name: str | None = None,
    options: LlmOptions | None = None,
    yes: bool = False,
    ask: Callable[[str], str] | None = None,
    command_line: str = "",
    force: bool = False,
    out=None,
    check: SanityCheck | str | None = None,
) -> Path:
    """Propose, show, confirm and write a plan. Returns the experiment directory.

    `ask(prompt) -> answer` is called unless `yes`; anything but y/yes declines (nothing written).
    """
    out = out or sys.stdout
    settings = settings or load_settings()
    design = propose_plan(request_text, settings=settings, preset=preset, name=name, options=options, check=check)
    command = command_line or shlex.join(["ck", "design", "--describe", request_text])

    def confirm(exp: Experiment, checks: list[Check]) -> bool:
        print(f"Plan proposed by {design.model_id} (valid after {design.rounds} round(s)):", file=out)
        print(f"purpose: {exp.purpose}", file=out)
        print_plan(exp, checks, out)
        if yes:
            how = "--yes"
        else:
            if ask is None:
                raise CkError("--yes", "not given", "cannot ask for confirmation without a terminal",
                              "re-run with --yes after checking the description")
            answer = ask(f"Write this plan to {exp.experiment_dir}? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                return False
            how = "confirmed at the prompt"
        design.log.append(PendingEntry("LLM_DECISION", f"accepted the plan of {design.model_id}",
                                       result=f"{how}; {len(exp.runs)} runs after {design.rounds} round(s)",
                                       explanation="written through design.write_experiment, "
                                                   "like ck design CHECK"))
        # The last gate before write_experiment writes: the LLM entries go first in the log.
        exp_dir = Path(exp.experiment_dir)
        for entry in design.log:
            explog.append_entry(exp_dir, "design", entry.action, entry.description, command=command,
                                result=entry.result, explanation=entry.explanation, extra=entry.extra, when=entry.when)
        return True

    return write_experiment(design.experiment, command, force=force, confirm=confirm,
                            explanation=f"designed by {design.model_id} from: {request_text}")


# ---------------------------------------------------------------- `ck design --describe`


# Flags of `ck design CHECK` that --describe shares: (flag, dest, help).
DESCRIBE_SETTING_FLAGS = (
    ("--scratch", "scratch", "scratch root (setting scratch)"),
    ("--models-dir", "models_dir", "model directories (setting models_dir)"),
    ("--data-dir", "data_dir", "where datasets are generated (setting data_dir)"),
    ("--wandb-project", "wandb_project", "W&B project (setting wandb_project)"),
)


def add_describe_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ck design --describe TEXT` (on the `design` parser, beside its targets).

    Defaults are SUPPRESS so these never shadow the same-named options of `ck design CHECK`.
    """
    group = parser.add_argument_group(
        "natural-language design (needs ANTHROPIC_API_KEY; the model is the setting llm_model)",
        'ck design --describe "what the runs should compare" [--check NAME] [--yes]')
    group.add_argument("--describe", metavar="TEXT", default=None,
                       help="describe the experiment in words ('-' reads it from stdin); an LLM proposes the runs, "
                            "which are validated, shown and written like `ck design CHECK`")
    hidden = argparse.SUPPRESS
    group.add_argument("--check", dest="describe_check", metavar="NAME", default=hidden,
                       help=f"with --describe: the sanity check to design ({', '.join(registered())}; "
                            "default: the only one registered)")
    group.add_argument("--preset", metavar="PRESET", default=hidden,
                       help="with --describe: the check's preset for what the description leaves open "
                            "(default: the check's default)")
    group.add_argument("--name", default=hidden,
                       help="with --describe: experiment name (default sanity_check_<check>_DATE)")
    group.add_argument("--yes", "-y", action="store_true", default=hidden,
                       help="with --describe: do not ask for confirmation")
    group.add_argument("--force", action="store_true", default=hidden, help="with --describe: replace an existing plan")
    for flag, dest, help_text in DESCRIBE_SETTING_FLAGS:
        group.add_argument(flag, dest=dest, metavar="VALUE", default=hidden, help=f"with --describe: {help_text}")


def _read_description(value: str) -> str:
    if value != "-":
        return value
    if sys.stdin.isatty():
        print("Describe the experiment, then Ctrl-D:", file=sys.stderr)
    return sys.stdin.read()


def run_describe(args: argparse.Namespace) -> int:
    if getattr(args, "target", None):
        raise CkError("--describe", args.describe, f"cannot be combined with the target {args.target}",
                      "use either `ck design --describe TEXT` or `ck design CHECK ...`")
    yes, force = bool(getattr(args, "yes", False)), bool(getattr(args, "force", False))
    from_stdin = args.describe == "-"
    if not yes and (from_stdin or not sys.stdin.isatty()):  # decided before any token is spent
        raise CkError("--yes", "not given", "cannot ask for confirmation: stdin is not a terminal"
                      + (" (it carries the description)" if from_stdin else ""), "add --yes")
    text = _read_description(args.describe)
    settings = load_settings({dest: getattr(args, dest, None) for _, dest, _ in DESCRIBE_SETTING_FLAGS})

    words = ["ck", "design", "--describe", text.strip()]
    for flag, dest in [("--check", "describe_check"), ("--preset", "preset"), ("--name", "name")] + [f[:2] for f in DESCRIBE_SETTING_FLAGS]:
        if getattr(args, dest, None) is not None:
            words += [flag, str(getattr(args, dest))]
    words += [flag for flag, on in (("--yes", yes), ("--force", force)) if on]

    check = default_check(getattr(args, "describe_check", None))
    preset = getattr(args, "preset", None) or check.default_preset
    if preset not in check.presets:
        raise CkError("--preset", preset, f"not a preset of the {check.name} check", f"use one of {', '.join(check.presets)}")
    exp_dir = design_from_description(
        text, settings=settings, preset=preset, name=getattr(args, "name", None),
        yes=yes, ask=input, command_line=shlex.join(words), force=force, check=check,
    )
    print("\n" + written_message(exp_dir))
    return 0
