"""Evaluation pages: runs, a run's results, the start form, comparisons, datasets and promotion gates.

Everything goes through the evaluations services the API uses (``RunService``, ``DatasetService``,
``GateService`` and the promotion gate ``EvalGateCheck``), so a page shows the API's numbers and a
form is refused exactly where ``POST /v1/evals/runs`` would refuse it; this module only shapes
their results for pages and reads the start form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor
from registry.configs.service import ConfigNotFoundError, ConfigVersionNotFoundError
from registry.console.formatting import pretty_json
from registry.evals.errors import (
    DatasetNotFoundError,
    DatasetVersionNotFoundError,
    GateFailedError,
    RunNotFoundError,
    RunsNotComparableError,
)
from registry.evals.gates import GATED_STATES, EvalGateCheck
from registry.evals.models import EvalRun
from registry.evals.repository import EvalRepository
from registry.evals.schemas import (
    CreateRun,
    DatasetItemOut,
    DatasetOut,
    DatasetVersionOut,
    GateOut,
    Interval,
    RunItemOut,
    RunOut,
)
from registry.evals.service import DatasetService, RunService
from registry.lib.errors import FieldError, NotFoundError, RegistryError
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.promotion import State
from registry.lib.schema import paginate
from registry.lib.versioned import GateCheck
from registry.prompts.errors import PromptNotFoundError, PromptVersionNotFoundError
from registry.prompts.models import PromptVersion
from registry.prompts.service import PromptLimits
from registry.stats import wilson_interval

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", ""]
# Scorers the start form offers as check boxes; any other goes in its JSON field.
COMMON_SCORERS: dict[str, dict[str, Any]] = {
    "exact_match": {"kind": "exact_match"},
    "exact_match_ci": {"kind": "exact_match", "name": "exact_match_ci", "case_sensitive": False},
    "valid_json": {"kind": "valid_json"},
}
SCORER_LABELS = {
    "exact_match": "Exact match with the expected answer",
    "exact_match_ci": "Exact match, ignoring case",
    "valid_json": "Answer is valid JSON",
}
CHANGED_SHOWN = 200
CONFIG_LABELS = ("production", "staging", "latest")


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class RunList:
    rows: list[RunOut]
    next_cursor: str | None
    prompt: str
    status: str


@dataclass(frozen=True, slots=True)
class ScorerRate:
    """One scorer of a run: how many of the items done it passed."""

    name: str
    kind: str
    passed: int
    scored: int

    @property
    def rate(self) -> float | None:
        return self.passed / self.scored if self.scored else None


# How often a running run's page asks for its moving parts (static/live.js): items finish in seconds.
RUN_REFRESH_MS = 2000


@dataclass(frozen=True, slots=True)
class RunView:
    run: RunOut
    scorers: list[ScorerRate]
    items: list[RunItemOut]
    next_cursor: str | None
    failed: bool

    @property
    def active(self) -> bool:
        return self.run.status in ("queued", "running")


@dataclass(frozen=True, slots=True)
class ChangedItem:
    position: int
    direction: Literal["regressed", "improved"]
    base: RunItemOut | None
    candidate: RunItemOut | None


@dataclass(frozen=True, slots=True)
class CompareView:
    base: RunOut
    candidate: RunOut
    comparison: dict[str, Any]
    changed: list[ChangedItem]
    more_changed: int  # changed items beyond those shown


@dataclass(frozen=True, slots=True)
class DatasetList:
    rows: list[DatasetOut]
    next_cursor: str | None
    prefix: str


@dataclass(frozen=True, slots=True)
class DatasetView:
    dataset: DatasetOut
    versions: list[DatasetVersionOut]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DatasetVersionView:
    dataset: DatasetOut
    version: DatasetVersionOut
    items: list[DatasetItemOut]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class GateVerdictView:
    """Whether a version may enter a gated state now, and the evidence: what the promote dialog shows."""

    gate: GateOut
    met: bool
    failures: list[str] = field(default_factory=list)
    evidence: str = ""  # the refusal's evidence as indented JSON
    run_id: int | None = None


@dataclass
class RunForm:
    """The start form as sent: text as typed, so a refused form is shown again unchanged."""

    prompt: str = ""
    version: str = ""
    config: str = ""  # any config's name; empty: the prompt version's own
    config_version: str = ""  # a number, or with ``config`` a label too
    dataset: str = ""
    dataset_version: str = ""
    common: list[str] = field(default_factory=lambda: ["exact_match"])
    scorers_json: str = ""
    rule: Literal["all", "min_score", "min_passed"] = "all"
    pass_value: str = ""
    concurrency: str = "4"
    errors: dict[str, str] = field(default_factory=dict)  # by field; ``form``: the form as a whole

    @classmethod
    def sent(cls, data: Mapping[str, Any], common: Sequence[str]) -> RunForm:
        def text(name: str, default: str = "") -> str:
            value = data.get(name, default)
            return str(value).strip() if value is not None else default

        rule = text("rule", "all")
        return cls(
            prompt=text("prompt"),
            version=text("version"),
            config=text("config"),
            config_version=text("config_version"),
            dataset=text("dataset"),
            dataset_version=text("dataset_version"),
            common=[c for c in common if c in COMMON_SCORERS],
            scorers_json=text("scorers_json"),
            rule=rule if rule in ("all", "min_score", "min_passed") else "all",  # type: ignore[arg-type]
            pass_value=text("pass_value"),
            concurrency=text("concurrency", "4") or "4",
        )


@dataclass(frozen=True, slots=True)
class RefusedCompare:
    """A run page whose "Compare with run" named no run to compare with: the page, what was typed, and why."""

    run: RunView
    typed: str
    problem: str


class RunFormError(ValueError):
    """What the form lacks before the service is asked, in words for the page, by field (``form``: the whole)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = dict(errors)


# The form's fields by the API's (``CreateRun``) top-level field names, for the service's field errors.
_FORM_FIELDS = {
    "prompt": "prompt",
    "version": "version",
    "config": "config",
    "config_version": "config_version",
    "dataset": "dataset",
    "scorers": "scorers_json",
    "pass_rule": "pass_value",
    "concurrency": "concurrency",
}
# A service's "not found" for the run's parts, by the field that named it.
_NOT_FOUND_FIELDS: tuple[tuple[type[NotFoundError], str], ...] = (
    (PromptNotFoundError, "prompt"),
    (PromptVersionNotFoundError, "version"),
    (ConfigVersionNotFoundError, "config_version"),
    (ConfigNotFoundError, "config"),
    (DatasetVersionNotFoundError, "dataset_version"),
    (DatasetNotFoundError, "dataset"),
)


class _Problems:
    """Every problem of the form at once, the first for each field."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def add(self, form_field: str, message: str) -> None:
        self.errors.setdefault(form_field, message)

    def whole(self, form_field: str, value: str, label: str, *, required: bool) -> int | None:
        if not value:
            if required:
                self.add(form_field, f"{label} is required")
            return None
        if not value.isdigit() or int(value) < 1:
            self.add(form_field, f"{label} must be a whole number from 1")
            return None
        return int(value)


def run_config(form: RunForm, problems: _Problems | None = None) -> dict[str, Any]:
    """The run's config fields: ``config`` (a number or a label picks its version; empty: its production
    version), else ``config_version`` of the prompt version's own config."""
    problems = problems if problems is not None else _Problems()
    if not form.config:
        return {
            "config_version": problems.whole("config_version", form.config_version, "Config version", required=False)
        }
    which = form.config_version
    if which in CONFIG_LABELS:
        return {"config": {"name": form.config, "label": which}}
    label = "Config version (a number or a label: production, staging, latest)"
    version = problems.whole("config_version", which, label, required=False)
    return {"config": {"name": form.config, "version": version}}


def run_request(form: RunForm) -> CreateRun:
    """The API's own request body, so the service checks the rest exactly as ``createEvalRun`` does."""
    problems = _Problems()
    scorers: list[Any] = [COMMON_SCORERS[c] for c in form.common]
    if form.scorers_json:
        try:
            extra = json.loads(form.scorers_json)
        except json.JSONDecodeError as exc:
            problems.add("scorers_json", f"More scorers is not JSON: {exc.msg} at character {exc.pos}")
        else:
            scorers.extend(extra if isinstance(extra, list) else [extra])
    if not scorers and "scorers_json" not in problems.errors:
        problems.add("scorers_json", "Choose at least one scorer, or give one in JSON")
    pass_rule: dict[str, Any] | None = None
    if form.rule == "min_score":
        try:
            pass_rule = {"min_score": float(form.pass_value)}
        except ValueError:
            problems.add("pass_value", "Minimum score must be a number from 0 to 1")
    elif form.rule == "min_passed":
        pass_rule = {"min_passed": problems.whole("pass_value", form.pass_value, "Scorers to pass", required=True)}
    if not form.prompt:
        problems.add("prompt", "Prompt is required")
    if not form.dataset:
        problems.add("dataset", "Dataset is required")
    body = {
        "prompt": form.prompt,
        "version": problems.whole("version", form.version, "Prompt version", required=True),
        **run_config(form, problems),
        "dataset": {
            "name": form.dataset,
            "version": problems.whole("dataset_version", form.dataset_version, "Dataset version", required=False),
        },
        "scorers": scorers,
        "pass_rule": pass_rule,
        "concurrency": problems.whole("concurrency", form.concurrency, "Concurrency", required=True),
    }
    if problems.errors:
        raise RunFormError(problems.errors)
    try:
        return msgspec.convert(body, CreateRun)
    except msgspec.ValidationError as exc:
        path = str(exc).rpartition("$.")[2].rstrip("`").split(".")[0].split("[")[0]
        raise RunFormError({_FORM_FIELDS.get(path, "form"): f"The form is not a run: {exc}"}) from exc


def problems_of(error: RegistryError) -> dict[str, str]:
    """A service's refusal by the form's field: its field errors, or its detail at the field whose name or number
    named nothing (an unknown prompt, version, config or dataset), else for the form as a whole."""
    found: dict[str, str] = {}
    for e in error.errors:
        if isinstance(e, FieldError):
            name = _FORM_FIELDS.get(e.field.split(".")[0].split("[")[0], "form")
            # A part of a field (``scorers[1].kind``: the second scorer, counting the ticked ones) is named.
            message = e.message if e.field in _FORM_FIELDS else f"{e.field}: {e.message}"
            cause = error.__cause__
            if name == "config" and isinstance(cause, ConfigVersionNotFoundError):  # the config's version
                name = "config_version"
            found[name] = f"{found[name]}; {message}" if name in found else message
        else:
            found.setdefault("form", str(e))
    if found:
        return found
    for kind, name in _NOT_FOUND_FIELDS:
        if isinstance(error, kind):
            return {name: error.detail}
    return {"form": error.detail}


def listed(run: EvalRun) -> RunOut:
    """A run for the list: its pass rate's Wilson interval (as the run's results give it) from its counters,
    without reading its items."""
    judged = run.items_done - run.items_scorer_errors  # an item a scorer failed on has no verdict
    if judged <= 0:
        return RunOut.of(run)
    rate = run.items_passed / judged
    low, high = wilson_interval(rate, judged)
    return RunOut.of(run, pass_rate=Interval(estimate=rate, low=low, high=high))


def scorer_rates(
    scorers: Sequence[Mapping[str, Any]], items: Iterable[Sequence[Mapping[str, Any]]]
) -> list[ScorerRate]:
    """Each scorer's passes over the items scored (each item's scores), in the run's scorer order (pure)."""
    counts: dict[str, list[int]] = {str(s.get("name") or s["kind"]): [0, 0] for s in scorers}
    kinds = {str(s.get("name") or s["kind"]): str(s["kind"]) for s in scorers}
    for item in items:
        for score in item:
            tally = counts.setdefault(str(score.get("name")), [0, 0])
            kinds.setdefault(str(score.get("name")), str(score.get("kind", "")))
            if score.get("error"):  # the scorer failed on this item: no verdict to count
                continue
            tally[1] += 1
            tally[0] += bool(score.get("passed"))
    return [ScorerRate(name, kinds[name], passed, scored) for name, (passed, scored) in counts.items()]


# --------------------------------------------------------------------------- pages


class EvalPages:
    """What the evaluation pages show and do, on one session."""

    def __init__(self, session: AsyncSession, limits: PromptLimits) -> None:
        self.session = session
        self.runs = RunService(session, limits)
        self.datasets = DatasetService(session)

    async def list_runs(self, page: PageRequest, *, prompt: str, status: str) -> RunList:
        found = await self.runs.list_runs(page, prompt=prompt or None, status=status or None)
        items, cursor = paginate(found, page.limit, lambda r: encode_cursor(r.id))
        return RunList([listed(r) for r in items], cursor, prompt, status)

    async def run_page(self, run_id: int, page: PageRequest, *, failed: bool) -> RunView:
        results = await self.runs.results(run_id)
        rows = await self.runs.items(run_id, page, failed_only=failed)
        items, cursor = paginate(rows, page.limit, lambda i: encode_cursor(i.position))
        rates = scorer_rates(results.run.scorers, await self.runs.repository.item_scores(run_id))
        return RunView(results.run, rates, [RunItemOut.of(i) for i in items], cursor, failed)

    async def start(self, form: RunForm, actor: Actor) -> int | RunForm:
        """The new run's id, or the form with what is wrong (nothing is saved then)."""
        try:
            run = await self.runs.create_run(run_request(form), actor)
        except RunFormError as problem:
            form.errors = problem.errors
            return form
        except RegistryError as error:
            if error.status_code >= 500:
                raise
            await self.session.rollback()
            form.errors = problems_of(error)
            return form
        return run.id

    async def cancel(self, run_id: int, actor: Actor) -> None:
        await self.runs.cancel(run_id, actor)

    async def compare_typed(self, typed: str, candidate_id: int, page: PageRequest) -> CompareView | RefusedCompare:
        """The comparison with the run typed in a run page's "Compare with run"; when that names no run, or one not
        comparable, the candidate's page again with the problem (a candidate that is gone: its 404)."""
        text = typed.strip()
        number = text.removeprefix("#")
        try:
            if not number.isdigit() or not 0 < int(number) < 2**31:
                raise RunsNotComparableError(f"'{text}' is not a run's number")
            return await self.compare(int(number), candidate_id)
        except (RunNotFoundError, RunsNotComparableError) as exc:
            return RefusedCompare(await self.run_page(candidate_id, page, failed=False), text, exc.detail)

    async def compare(self, base_id: int, candidate_id: int) -> CompareView:
        _, found = await self.runs.compare(base_id, candidate_id)
        comparison: dict[str, Any] = dict(found)
        regressed: list[int] = comparison.pop("regressed")
        improved: list[int] = comparison.pop("improved")
        wanted: list[tuple[int, Literal["regressed", "improved"]]] = [(p, "regressed") for p in regressed]
        wanted += [(p, "improved") for p in improved]
        shown = wanted[:CHANGED_SHOWN]
        positions = sorted(p for p, _ in shown)
        repository = self.runs.repository
        base_items = {i.position: RunItemOut.of(i) for i in await repository.run_items_at(base_id, positions)}
        candidate_items = {i.position: RunItemOut.of(i) for i in await repository.run_items_at(candidate_id, positions)}
        changed = [ChangedItem(p, direction, base_items.get(p), candidate_items.get(p)) for p, direction in shown]
        return CompareView(
            (await self.runs.results(base_id)).run,
            (await self.runs.results(candidate_id)).run,
            comparison,
            changed,
            len(wanted) - len(shown),
        )

    async def list_datasets(self, page: PageRequest, *, prefix: str) -> DatasetList:
        found = await self.datasets.list_datasets(page, prefix=prefix or None)
        items, cursor = paginate(found, page.limit, lambda d: encode_cursor(d.name))
        return DatasetList([DatasetOut.of(d) for d in items], cursor, prefix)

    async def dataset_page(self, name: str, page: PageRequest) -> DatasetView:
        dataset = DatasetOut.of(await self.datasets.require(name))
        found = await self.datasets.list_versions(name, page)
        items, cursor = paginate(found, page.limit, lambda v: encode_cursor(v.number))
        return DatasetView(dataset, [DatasetVersionOut.of(name, v) for v in items], cursor)

    async def dataset_version_page(self, name: str, number: int, page: PageRequest) -> DatasetVersionView:
        dataset = await self.datasets.require(name)
        version = await self.datasets.require_version(dataset, number)
        found = await self.datasets.items(version, page)
        items, cursor = paginate(found, page.limit, lambda i: encode_cursor(i.position))
        return DatasetVersionView(
            DatasetOut.of(dataset),
            DatasetVersionOut.of(name, version),
            [DatasetItemOut.of(i) for i in items],
            cursor,
        )


# --------------------------------------------------------------------------- gates on the prompt pages


async def prompt_gates(session: AsyncSession, name: str, prompt_id: int) -> list[GateOut]:
    repository = EvalRepository(session)
    gates = [await repository.get_gate(prompt_id, state) for state in GATED_STATES]
    return [GateOut.of(name, g) for g in gates if g is not None]


async def gate_verdict(
    session: AsyncSession, name: str, version: PromptVersion, to: State, current: PromptVersion | None
) -> GateVerdictView | None:
    """The gate on ``to`` judged now for ``version``, as the promotion will judge it; None when not gated."""
    gate = await EvalRepository(session).get_gate(version.prompt_id, to.value)
    if gate is None:
        return None
    check = GateCheck("prompt", name, version, to, current, Actor(name="console"), None)
    try:
        await EvalGateCheck().check(session, check)
    except GateFailedError as refused:
        return refused_verdict(GateOut.of(name, gate), refused)
    return GateVerdictView(GateOut.of(name, gate), True)


def refused_verdict(gate: GateOut, refused: GateFailedError) -> GateVerdictView:
    evidence: dict[str, Any] = dict(refused.extra.get("evidence") or {})
    run_id = evidence.get("run_id")
    return GateVerdictView(
        gate,
        False,
        [str(f) for f in refused.extra.get("failures") or [refused.detail]],
        pretty_json(evidence),
        run_id if isinstance(run_id, int) else None,
    )
