"""Promotion gates: what a prompt version must show on a dataset before it enters a state.

``EvalGateCheck`` is the ``PromotionGate`` the app puts in its sessions: the shared promotion
workflow calls it for every promotion, so the API, the console, an experiment's winner and
prompts-as-code (which promotes through the API) all pass the same gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.keys import Scope, grants
from registry.auth.models import ApiKey
from registry.auth.principal import Actor
from registry.db.base import utcnow
from registry.evals.errors import GateFailedError, GateNotFoundError, GateOverrideForbiddenError
from registry.evals.models import EvalGate, EvalRun
from registry.evals.repository import EvalRepository
from registry.evals.schemas import SetGate
from registry.evals.service import DatasetService, by_position
from registry.evals.statistics import Gate, PairedComparison, compare_paired, evaluate_gate, summarize
from registry.lib.errors import InvalidInputError, NotFoundError
from registry.lib.promotion import HELD_STATES
from registry.lib.versioned import GateCheck
from registry.prompts.errors import PROMPT_ERRORS
from registry.prompts.models import Prompt, PromptVersion

GATED_STATES = tuple(s.value for s in HELD_STATES)


class GateService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.repository = EvalRepository(session)
        self.audit = AuditLog(session)

    async def _prompt(self, name: str) -> Prompt:
        prompt = (await self.session.execute(select(Prompt).where(Prompt.name == name))).scalar_one_or_none()
        if prompt is None:
            raise PROMPT_ERRORS.resource_not_found(f"no prompt is named '{name}'")
        return prompt

    @staticmethod
    def _state(state: str) -> str:
        if state not in GATED_STATES:
            raise InvalidInputError(f"only {' and '.join(GATED_STATES)} can be gated, not '{state}'")
        return state

    async def get(self, name: str, state: str) -> EvalGate:
        gate = await self.repository.get_gate((await self._prompt(name)).id, self._state(state))
        if gate is None:
            raise GateNotFoundError(f"prompt '{name}' has no gate on {state}")
        return gate

    async def put(self, name: str, state: str, data: SetGate, actor: Actor) -> EvalGate:
        prompt = await self._prompt(name)
        await DatasetService(self.session).resolve(data.dataset)  # the dataset (and version) must exist now
        gate = await self.repository.get_gate(prompt.id, self._state(state))
        before = None if gate is None else _gate_summary(gate)
        if gate is None:
            gate = EvalGate(prompt_id=prompt.id, state=state)
            self.session.add(gate)
        gate.dataset = data.dataset.name
        gate.dataset_version = data.dataset.version
        gate.min_pass_rate = data.min_pass_rate
        gate.no_regression = data.no_regression
        gate.alpha = data.alpha
        gate.updated_by = actor.name
        gate.updated_at = utcnow()
        await self.session.flush()
        await self.audit.record(
            actor, "prompt.gate.set", "prompt", name, before=before, after={"state": state, **_gate_summary(gate)}
        )
        return gate

    async def delete(self, name: str, state: str, actor: Actor) -> None:
        gate = await self.get(name, state)
        await self.session.delete(gate)
        await self.session.flush()
        await self.audit.record(
            actor, "prompt.gate.remove", "prompt", name, before={"state": state, **_gate_summary(gate)}
        )


def _gate_summary(gate: EvalGate) -> dict[str, Any]:
    return {
        "dataset": gate.dataset,
        "dataset_version": gate.dataset_version,
        "min_pass_rate": gate.min_pass_rate,
        "no_regression": gate.no_regression,
        "alpha": gate.alpha,
    }


def _config_of(version: PromptVersion) -> tuple[str | None, int | None]:
    config = version.config_version
    return (config.config.name, config.number) if config is not None else (None, None)


def renders_alike(version: PromptVersion, other: PromptVersion) -> bool:
    """Whether two versions of a prompt render the same text from the same variables: the same kind,
    template, messages and input schema (their configs may differ)."""
    return (
        version.prompt_id == other.prompt_id
        and version.kind == other.kind
        and version.template == other.template
        and version.messages == other.messages
        and version.input_schema == other.input_schema
    )


async def _twins(repository: EvalRepository, version: PromptVersion) -> list[int]:
    """The numbers of the prompt's other versions that render exactly as ``version`` does.

    Promoting a version with another config (a rollout's candidate, an experiment's winner) creates such
    a version: what was evaluated is the twin with that config, which the new version cannot have run yet.
    """
    return [other.number for other in await repository.versions_alike(version) if renders_alike(version, other)]


async def _evidence_run(
    repository: EvalRepository,
    prompt: str,
    version: PromptVersion,
    twins: Sequence[int],
    config: tuple[str | None, int | None],
    dataset_version_id: int,
) -> EvalRun | None:
    """The latest completed run, on the dataset version and with ``config`` (any config when it is None),
    of ``version`` or one of its ``twins``: a run is of a rendering and a config, and a twin renders the same.

    For the evidence a gate takes, ``config`` is the version's own config version: what promotion puts into
    the state (a run with another config is evidence for comparisons, not for a gate). A version that links
    no config is rendered by the registry and run by the app on a model of its own, so a run with any config
    counts.
    """
    return await repository.latest_completed_run(
        prompt=prompt,
        versions=[version.number, *twins],
        config=config[0],
        config_version=config[1],
        dataset_version_id=dataset_version_id,
    )


def _run_label(run: EvalRun, version: PromptVersion) -> str:
    """``run N``, naming the version it ran when that is a twin of ``version``."""
    if run.prompt_version == version.number:
        return f"run {run.id}"
    return f"run {run.id} of same-content version {run.prompt_version}"


def _baseline_config(candidate: PromptVersion, holder: PromptVersion, run: EvalRun) -> tuple[str, int, bool]:
    """The config version of the holder's run that ``run`` of the candidate is paired with, and whether it
    is the holder's own.

    Two versions with configs of their own compare as each would run: the holder's own config. Otherwise
    (either links none) the pair runs the same config version, so only the prompts differ.
    """
    own, own_version = _config_of(holder)
    if own is not None and own_version is not None and _config_of(candidate)[0] is not None:
        return own, own_version, True
    return run.config, run.config_version, False


class EvalGateCheck:
    """The ``PromotionGate`` of evaluations: a completed run of the version on the gate's dataset version
    (with exactly its own config version, or any config for a version that links none) must meet the gate,
    unless an admin overrides it with a reason. A run of a version with the same content (a twin) counts as
    the version's own, with the same config condition."""

    async def check(self, session: AsyncSession, check: GateCheck) -> str | None:
        if check.resource_type != "prompt" or check.to.value not in GATED_STATES:
            return None
        version: PromptVersion = check.version
        repository = EvalRepository(session)
        gate = await repository.get_gate(version.prompt_id, check.to.value)
        if gate is None:
            return None
        failures, evidence = await self._verdict(session, repository, gate, check)
        if not failures:
            # Met on a twin's run: the history says which run, since the version's own runs do not show it.
            if evidence["run_prompt_version"] != version.number:
                return f"gate met by run {evidence['run_id']} of same-content version {evidence['run_prompt_version']}"
            return None
        if check.override_reason is None:
            raise GateFailedError(
                f"prompt '{check.name}' version {version.number} may not enter {check.to.value}: "
                + "; ".join(failures),
                failures=failures,
                evidence=evidence,
            )
        if not await _is_admin(session, check.actor):
            raise GateOverrideForbiddenError("overriding a failed gate needs the 'admin' scope")
        await AuditLog(session).record(
            check.actor,
            "prompt.gate_override",
            "prompt",
            check.name,
            after={
                "version": version.number,
                "to": check.to.value,
                "reason": check.override_reason,
                "failures": failures,
                "evidence": evidence,
            },
        )
        return f"gate overridden: {check.override_reason}"

    async def _verdict(
        self, session: AsyncSession, repository: EvalRepository, gate: EvalGate, check: GateCheck
    ) -> tuple[list[str], dict[str, Any]]:
        version: PromptVersion = check.version
        config, config_version = _config_of(version)
        try:
            dataset = await DatasetService(session).require(gate.dataset)
            dataset_version = await DatasetService(session).require_version(dataset, gate.dataset_version)
        except NotFoundError as exc:
            return [exc.detail], {"dataset": gate.dataset, "dataset_version": gate.dataset_version}
        where = f"{gate.dataset}@{dataset_version.number}"
        evidence: dict[str, Any] = {"gate": {"state": check.to.value, **_gate_summary(gate)}, "dataset": where}
        twins = await _twins(repository, version)
        run = await _evidence_run(repository, check.name, version, twins, (config, config_version), dataset_version.id)
        if run is None:
            needed = "any config" if config is None else f"config {config}@{config_version}"
            of = f"version {version.number}"
            if twins:
                of += f" or of same-content {_versions(twins)}"
            failure = f"no completed evaluation run of {of} with {needed} on dataset {where}"
            if config is None:
                failure += " (it links no model config, so a run with any config counts)"
            return [failure], evidence
        outcomes = await repository.outcomes(run.id)
        summary = summarize([ok for _, ok, _, _ in outcomes], [score or 0.0 for _, _, score, _ in outcomes])
        comparison: PairedComparison[Any] | None = None
        baseline_label = f"the {check.to.value} version"
        current: PromptVersion | None = check.current
        if gate.no_regression and current is not None:
            paired, paired_version, holders_own = _baseline_config(version, current, run)
            holder_twins = await _twins(repository, current)
            baseline = await _evidence_run(
                repository, check.name, current, holder_twins, (paired, paired_version), dataset_version.id
            )
            baseline_label = f"{check.to.value} version {current.number}"
            if not holders_own:
                baseline_label += f" on config {paired}@{paired_version}"
            if baseline is not None:
                baseline_label += f" ({_run_label(baseline, current)})"
                comparison = compare_paired(by_position(await repository.outcomes(baseline.id)), by_position(outcomes))
        verdict = evaluate_gate(
            Gate(min_pass_rate=gate.min_pass_rate, no_regression=gate.no_regression, alpha=gate.alpha),
            summary,
            comparison,
            run_label=_run_label(run, version),
            baseline_label=baseline_label,
            baseline_exists=current is not None,
        )
        evidence["config"] = f"{run.config}@{run.config_version}"
        return list(verdict.failures), {
            **evidence,
            **verdict.evidence,
            "run_id": run.id,
            "run_prompt_version": run.prompt_version,
        }


def _versions(numbers: Sequence[int]) -> str:
    if len(numbers) == 1:
        return f"version {numbers[0]}"
    return f"versions {', '.join(str(n) for n in numbers[:-1])} and {numbers[-1]}"


async def _is_admin(session: AsyncSession, actor: Actor) -> bool:
    if actor.key_public_id is None:
        return False
    key = (await session.execute(select(ApiKey).where(ApiKey.public_id == actor.key_public_id))).scalar_one_or_none()
    return key is not None and grants(frozenset(key.scopes), Scope.ADMIN)
