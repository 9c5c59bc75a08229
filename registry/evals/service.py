"""Datasets, runs and their results: the evaluations domain's logic (no HTTP, no SQL)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.configs.schemas import ConfigRef
from registry.configs.service import ConfigService
from registry.db.base import utcnow
from registry.evals.errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetVersionNotFoundError,
    RunNotFoundError,
    RunsNotComparableError,
)
from registry.evals.models import EvalDataset, EvalDatasetItem, EvalDatasetVersion, EvalRun, EvalRunItem
from registry.evals.repository import EvalRepository, Outcome
from registry.evals.schemas import (
    CreateDataset,
    CreateRun,
    DatasetItemIn,
    DatasetRef,
    DiscardedSpend,
    Interval,
    RunOut,
)
from registry.evals.scorers import Judge, parse_pass_rule, parse_scorers
from registry.evals.statistics import compare_paired, summarize
from registry.lib.errors import FieldError, InvalidInputError, NotFoundError
from registry.lib.pagination import PageRequest
from registry.lib.versioned import LabelNotSetError
from registry.lib.versioned_schemas import Label
from registry.prompts.models import PromptVersion
from registry.prompts.service import PromptLimits, PromptService

DATASET = "dataset"
MAX_RUN_ID = 2**63 - 1  # the runs' BIGINT id column


def items_digest(items: Sequence[DatasetItemIn]) -> str:
    """SHA-256 of the items in order, as canonical JSON: equal items give an equal digest."""
    return hashlib.sha256(msgspec.json.encode(items, order="sorted")).hexdigest()


def item_rows(items: Sequence[DatasetItemIn]) -> list[dict[str, object]]:
    return [
        {
            "position": position,
            "variables": item.variables,
            "expected": item.expected,
            "tags": item.tags,
            "metadata": item.metadata,
        }
        for position, item in enumerate(items, start=1)
    ]


class DatasetService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.repository = EvalRepository(session)
        self.audit = AuditLog(session)

    async def require(self, name: str, *, for_update: bool = False) -> EvalDataset:
        dataset = await self.repository.get_dataset(name, for_update=for_update)
        if dataset is None:
            raise DatasetNotFoundError(f"no dataset is named '{name}'")
        return dataset

    async def require_version(self, dataset: EvalDataset, number: int | None) -> EvalDatasetVersion:
        """Version ``number``, or the latest when None."""
        number = number or dataset.latest_version
        version = await self.repository.get_version(dataset.id, number) if number else None
        if version is None:
            which = f"version {number}" if number else "versions yet"
            raise DatasetVersionNotFoundError(f"dataset '{dataset.name}' has no {which}")
        return version

    async def resolve(self, ref: DatasetRef) -> tuple[EvalDataset, EvalDatasetVersion]:
        dataset = await self.require(ref.name)
        return dataset, await self.require_version(dataset, ref.version)

    async def create_dataset(self, data: CreateDataset, actor: Actor) -> EvalDataset:
        if await self.repository.dataset_exists(data.name):
            raise DatasetExistsError(f"a dataset named '{data.name}' already exists")
        dataset = EvalDataset(
            name=data.name, description=data.description, created_by=actor.name, updated_by=actor.name
        )
        await self.repository.add(dataset)
        await self.audit.record(actor, "dataset.create", DATASET, data.name, after={"description": data.description})
        return dataset

    async def list_datasets(self, page: PageRequest, *, prefix: str | None) -> Sequence[EvalDataset]:
        return await self.repository.list_datasets(page, prefix=prefix)

    async def create_version(
        self, name: str, items: Sequence[DatasetItemIn], commit_message: str, actor: Actor
    ) -> tuple[EvalDatasetVersion, bool]:
        """Store a new version; the newest is returned instead (not created) when its items are identical.

        The dataset row is locked, so concurrent creates get consecutive numbers.
        """
        if not items:
            raise InvalidInputError("a dataset version needs at least one item", errors=[FieldError("items", "empty")])
        digest = items_digest(items)
        dataset = await self.require(name, for_update=True)
        if dataset.latest_version:
            newest = await self.require_version(dataset, dataset.latest_version)
            if newest.content_sha256 == digest:
                return newest, False
        dataset.latest_version += 1
        dataset.updated_at = utcnow()
        dataset.updated_by = actor.name
        version = EvalDatasetVersion(
            dataset_id=dataset.id,
            number=dataset.latest_version,
            item_count=len(items),
            content_sha256=digest,
            commit_message=commit_message,
            created_by=actor.name,
        )
        await self.repository.add(version)
        await self.repository.insert_items(version.id, item_rows(items))
        await self.audit.record(
            actor,
            "dataset.version.create",
            DATASET,
            name,
            after={"version": version.number, "items": len(items), "sha256": digest},
        )
        return version, True

    async def list_versions(self, name: str, page: PageRequest) -> Sequence[EvalDatasetVersion]:
        dataset = await self.require(name)
        return await self.repository.list_versions(dataset.id, page)

    async def get_version(self, name: str, number: int | None) -> EvalDatasetVersion:
        return await self.require_version(await self.require(name), number)

    async def items(self, version: EvalDatasetVersion, page: PageRequest) -> Sequence[EvalDatasetItem]:
        after = page.after_number or 0
        return await self.repository.items(version.id, after=after, limit=page.limit + 1)

    async def variable_names(self, version: EvalDatasetVersion) -> list[str]:
        """Every variable name some item of the version uses, sorted: the CSV export's columns."""
        names: set[str] = set()
        async for rows in self.repository.all_items(version.id):
            for row in rows:
                names.update(row.variables)
        return sorted(names)


@dataclass(frozen=True, slots=True)
class RunResults:
    run: RunOut
    passed: list[bool]
    scores: list[float]


def _interval(estimate: float | None, bounds: tuple[float, float] | None) -> Interval:
    low, high = bounds if bounds is not None else (None, None)
    return Interval(estimate=estimate, low=low, high=high)


class RunService:
    def __init__(self, session: AsyncSession, limits: PromptLimits) -> None:
        self.session = session
        self.repository = EvalRepository(session)
        self.prompts = PromptService(session, limits)
        self.configs = ConfigService(session)
        self.datasets = DatasetService(session)
        self.audit = AuditLog(session)

    async def create_run(self, data: CreateRun, actor: Actor) -> EvalRun:
        """Check everything a run needs now, so a queued run can only fail on its items or its backend."""
        specs = parse_scorers(data.scorers)
        rule = parse_pass_rule(data.pass_rule, specs)
        prompt_version = await self.prompts.get_version(data.prompt, data.version)
        config, config_version, own = await self._run_config(data, prompt_version)
        specs = tuple(
            [
                await self._pin_judge(spec, index) if isinstance(spec, Judge) else spec
                for index, spec in enumerate(specs)
            ]
        )
        dataset, version = await self.datasets.resolve(data.dataset)
        run = EvalRun(
            prompt=data.prompt,
            prompt_version=data.version,
            config=config,
            config_version=config_version,
            dataset_version_id=version.id,
            dataset=dataset.name,
            dataset_version=version.number,
            scorers=[spec.as_dict() for spec in specs],
            pass_rule=rule.as_dict(),
            concurrency=data.concurrency,
            status="queued",
            total_items=version.item_count,
            api_key_id=actor.key_public_id,
            created_by=actor.name,
        )
        await self.repository.add(run)
        await self.audit.record(
            actor,
            "eval_run.create",
            "eval_run",
            str(run.id),
            after={
                "prompt": run.prompt,
                "version": run.prompt_version,
                "config": f"{config}@{config_version}",
                "own_config": own,
                "dataset": f"{dataset.name}@{version.number}",
            },
        )
        return run

    async def _run_config(self, data: CreateRun, prompt_version: PromptVersion) -> tuple[str, int, bool]:
        """The config name and version number the run completes with, and whether they are the version's own.

        ``config`` names any config version (by number, or a label resolved and pinned now), whether the prompt
        version links a config or not; ``config_version`` another version of the version's own config; neither
        the version's own. The run records the one chosen, and only a run with the version's own config is a
        promotion gate's evidence (``registry.evals.gates``).
        """
        own = prompt_version.config_version
        if data.config is not None:
            if data.config_version is not None:
                raise InvalidInputError(
                    "give config (any config) or config_version (a version of the prompt version's own config), "
                    "not both",
                    errors=[FieldError("config_version", "not allowed with config")],
                )
            chosen = await self.configs.resolve_ref(data.config, field="config")
            mine = own is not None and own.id == chosen.id
            return data.config.name, chosen.number, mine
        if own is None:
            raise InvalidInputError(
                f"prompt '{data.prompt}' version {data.version} links no model config: name the config to "
                "evaluate it with in config",
                errors=[FieldError("config", "required: the prompt version links no model config")],
            )
        if data.config_version is None:
            return own.config.name, own.number, True
        workflow = self.configs.workflow
        chosen = await workflow.require_version(await workflow.require(own.config.name), data.config_version)
        return own.config.name, chosen.number, chosen.id == own.id

    async def _pin_judge(self, spec: Judge, index: int) -> Judge:
        """The judge with its prompt version and its config's version pinned now, as the run's own config is:
        resolved item by item, a promotion of the judge prompt (or a new version of its config) during the run,
        or when a resumed run reads its plan again, had items of one run graded by different judges."""
        if spec.label is not None and spec.label not in get_args(Label):
            detail = f"must be one of {', '.join(get_args(Label))}, not '{spec.label}'"
            raise InvalidInputError(
                f"the judge's label {detail}", errors=[FieldError(f"scorers[{index}].label", detail)]
            )
        try:
            _, version = await self.prompts.workflow.resolve(spec.prompt, version=spec.version, label=spec.label)
        except NotFoundError as exc:
            field = (
                "version" if spec.version is not None else "label" if isinstance(exc, LabelNotSetError) else "prompt"
            )
            raise InvalidInputError(exc.detail, errors=[FieldError(f"scorers[{index}].{field}", exc.detail)]) from exc
        if spec.config is None and version.config_version_id is None:
            # Else every item's judge would fail on it, and the run complete as if every output had failed.
            detail = (
                f"judge prompt '{spec.prompt}' version {version.number} links no model config: name the config to "
                "judge with in config"
            )
            raise InvalidInputError(detail, errors=[FieldError(f"scorers[{index}].config", f"required: {detail}")])
        config_version = spec.config_version
        if spec.config is not None:
            ref = ConfigRef(
                name=spec.config, version=spec.config_version, label=None if spec.config_version else "latest"
            )
            config_version = (await self.configs.resolve_ref(ref, field=f"scorers[{index}].config")).number
        return dataclasses.replace(spec, version=version.number, label=None, config_version=config_version)

    async def require(self, run_id: int) -> EvalRun:
        # An id past the id column's range names no run: asked for, the database would refuse the query itself.
        run = await self.repository.get_run(run_id) if 0 < run_id <= MAX_RUN_ID else None
        if run is None:
            raise RunNotFoundError(f"no evaluation run has id {run_id}")
        return run

    async def results(self, run_id: int) -> RunResults:
        """The run with its aggregates so far: pass rate and mean score, each with a 95% interval, and what
        attempts given up without an outcome spent (not those of items still under way: ``run_and_discarded``)."""
        found = await self.repository.run_and_discarded(run_id) if 0 < run_id <= MAX_RUN_ID else None
        if found is None:
            raise RunNotFoundError(f"no evaluation run has id {run_id}")
        run, (discarded_cost, discarded_input, discarded_output) = found
        # An item a scorer failed on has no verdict: out of the pass rate and mean score (``items_scorer_errors``).
        outcomes = judged(await self.repository.outcomes(run.id))
        passed = [ok for _, ok, _, _ in outcomes]
        scores = [score if score is not None else 0.0 for _, _, score, _ in outcomes]
        out = msgspec.structs.replace(
            RunOut.of(run),
            discarded=DiscardedSpend(
                cost=max(0.0, round(discarded_cost, 9)),
                input_tokens=discarded_input,
                output_tokens=discarded_output,
            ),
        )
        if outcomes:
            summary = summarize(passed, scores)
            out = msgspec.structs.replace(
                out,
                pass_rate_interval=_interval(summary.pass_rate, summary.pass_rate_ci),
                mean_score_interval=_interval(summary.mean_score, summary.mean_score_ci),
            )
        return RunResults(out, passed, scores)

    async def cancel(self, run_id: int, actor: Actor) -> EvalRun:
        """Cancel a queued or running run; a finished one is left as it is (and returned)."""
        run = await self.require(run_id)
        if await self.repository.cancel(run.id, utcnow()):
            await self.audit.record(actor, "eval_run.cancel", "eval_run", str(run.id), before={"status": run.status})
            run = await self.require(run_id)
        return run

    async def list_runs(self, page: PageRequest, *, prompt: str | None, status: str | None = None) -> Sequence[EvalRun]:
        return await self.repository.list_runs(page, prompt=prompt, status=status)

    async def items(self, run_id: int, page: PageRequest, *, failed_only: bool) -> Sequence[EvalRunItem]:
        run = await self.require(run_id)
        return await self.repository.run_items(run.id, page, failed_only=failed_only)

    async def compare(self, base_id: int, candidate_id: int) -> tuple[int, dict[str, object]]:
        base, candidate = await self.require(base_id), await self.require(candidate_id)
        if base.dataset_version_id != candidate.dataset_version_id:
            raise RunsNotComparableError(
                f"run {base_id} used {base.dataset}@{base.dataset_version} and run {candidate_id} "
                f"{candidate.dataset}@{candidate.dataset_version}: item by item needs the same dataset version"
            )
        base_outcomes = judged(await self.repository.outcomes(base.id))
        candidate_outcomes = judged(await self.repository.outcomes(candidate.id))
        paired, comparison = paired_comparison(base_outcomes, candidate_outcomes)
        # Items a scorer failed on in either run are not paired: they have no verdict.
        comparison["scorer_errors"] = {str(run.id): run.items_scorer_errors for run in (base, candidate)}
        # A run not completed (still going, failed, cancelled) is compared on the items it stored, the first ones
        # done: the comparison says so rather than reading as one of the whole dataset version.
        comparison["incomplete_runs"] = [run.id for run in (base, candidate) if run.status != "completed"]
        return paired, comparison


def paired_comparison(base: Sequence[Outcome], candidate: Sequence[Outcome]) -> tuple[int, dict[str, object]]:
    """Pair two runs' items by dataset position and compare them; the items that changed are listed."""
    result = compare_paired(by_position(base), by_position(candidate))
    return result.matched, {**result.as_dict(), "regressed": list(result.regressed), "improved": list(result.improved)}


def judged(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The outcomes whose scorers all answered: an item a scorer (a judge) failed on is neither passed nor failed."""
    return [outcome for outcome in outcomes if outcome[3] != "scorer_error"]


def by_position(outcomes: Sequence[Outcome]) -> dict[int, tuple[bool, float]]:
    return {position: (ok, score if score is not None else 0.0) for position, ok, score, _ in outcomes}
