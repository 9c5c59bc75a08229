"""Promotion gates: what a prompt version must show on a dataset before it enters a state.

``EvalGateCheck`` is the ``PromotionGate`` the app puts in its sessions: the shared promotion
workflow calls it for every promotion, so the API, the console, an experiment's winner and
prompts-as-code (which promotes through the API) all pass the same gate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, get_args

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.keys import Scope, grants
from registry.auth.models import ApiKey
from registry.auth.principal import Actor
from registry.configs.schemas import ConfigRef
from registry.configs.service import ConfigService
from registry.db.base import utcnow
from registry.evals.errors import GateFailedError, GateNotFoundError, GateOverrideForbiddenError
from registry.evals.models import EvalGate, EvalRun
from registry.evals.repository import EvalRepository
from registry.evals.schemas import ANY_SCORING, SetGate, gate_scoring
from registry.evals.scorers import Judge, parse_scorers
from registry.evals.scoring import Scoring, describe, matches, normalise, of_run
from registry.evals.service import DatasetService, by_position, judged
from registry.evals.statistics import Gate, PairedComparison, compare_paired, evaluate_gate, summarize
from registry.lib.errors import FieldError, InvalidInputError, NotFoundError
from registry.lib.promotion import HELD_STATES
from registry.lib.versioned import GateCheck, LabelNotSetError, VersionWorkflow
from registry.lib.versioned_schemas import Label
from registry.prompts.errors import PROMPT_ERRORS
from registry.prompts.models import Prompt, PromptVersion
from registry.prompts.repository import PromptRepository

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
            detail = f"only {' and '.join(GATED_STATES)} can be gated, not '{state[:64]}'"
            raise InvalidInputError(
                detail, errors=[FieldError("target_state", f"must be one of {', '.join(GATED_STATES)}")]
            )
        return state

    async def get(self, name: str, state: str) -> EvalGate:
        gate = await self.repository.get_gate((await self._prompt(name)).id, self._state(state))
        if gate is None:
            raise GateNotFoundError(f"prompt '{name}' has no gate on {state}")
        return gate

    async def put(self, name: str, state: str, data: SetGate, actor: Actor) -> EvalGate:
        prompt = await self._prompt(name)
        scoring = await self._scoring(data)
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
        gate.scorers = None if scoring is None else list(scoring.scorers)
        gate.pass_rule = None if scoring is None else scoring.pass_rule
        gate.updated_by = actor.name
        gate.updated_at = utcnow()
        await self.session.flush()
        await self.audit.record(
            actor, "prompt.gate.set", "prompt", name, before=before, after={"state": state, **_gate_summary(gate)}
        )
        return gate

    async def _scoring(self, data: SetGate) -> Scoring | None:
        """The scoring the gate names, normalised as a run stores its own, with each judge named by label pinned
        to the version the label points at now (as a run pins it when it starts); None without scorers."""
        if data.scorers is None:
            if data.pass_rule is not None:
                detail = "a pass rule needs the scorers it combines"
                raise InvalidInputError(f"pass_rule: {detail}", errors=[FieldError("scorers", f"required: {detail}")])
            return None
        scoring = normalise(data.scorers, data.pass_rule)
        specs = parse_scorers(list(scoring.scorers))
        pinned = [
            await self._pin_judge(spec, index) if isinstance(spec, Judge) else spec for index, spec in enumerate(specs)
        ]
        return Scoring(tuple(spec.as_dict() for spec in pinned), scoring.pass_rule)

    async def _pin_judge(self, spec: Judge, index: int) -> Judge:
        """The judge as the gate asks for it: its prompt (and config) must exist, a version must exist, and a label
        is pinned to its version now. Without a version or label, a run's judge of any version counts (a run's
        judge without one is the judge prompt's production version when the run starts)."""
        if spec.label is not None and spec.label not in get_args(Label):
            detail = f"must be one of {', '.join(get_args(Label))}, not '{spec.label}'"
            raise InvalidInputError(
                f"the judge's label {detail}", errors=[FieldError(f"scorers[{index}].label", detail)]
            )
        workflow = VersionWorkflow(
            self.session, PromptRepository(self.session), change_kind="prompt", errors=PROMPT_ERRORS
        )
        try:
            if spec.version is None and spec.label is None:
                await workflow.require(spec.prompt)
            else:
                _, version = await workflow.resolve(spec.prompt, version=spec.version, label=spec.label)
                spec = dataclasses.replace(spec, version=version.number, label=None)
        except NotFoundError as exc:
            field = (
                "version" if spec.version is not None else "label" if isinstance(exc, LabelNotSetError) else "prompt"
            )
            raise InvalidInputError(exc.detail, errors=[FieldError(f"scorers[{index}].{field}", exc.detail)]) from exc
        if spec.config is not None:
            ref = ConfigRef(
                name=spec.config, version=spec.config_version, label=None if spec.config_version else "latest"
            )
            await ConfigService(self.session).resolve_ref(ref, field=f"scorers[{index}].config")
        return spec

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
        "scorers": gate.scorers,
        "pass_rule": gate.pass_rule,
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


@dataclasses.dataclass(frozen=True, slots=True)
class _Evidence:
    """The run a gate takes (None: none is scored as asked) and the newest run scored otherwise, if newer."""

    run: EvalRun | None
    unlike: tuple[int, Scoring] | None = None


async def _evidence_run(
    repository: EvalRepository,
    prompt: str,
    version: PromptVersion,
    twins: Sequence[int],
    config: tuple[str | None, int | None],
    dataset_version_id: int,
    scoring: Scoring | None,
) -> _Evidence:
    """The latest completed run, on the dataset version and with ``config`` (any config when it is None),
    of ``version`` or one of its ``twins``, scored as ``scoring`` asks (any way when it is None): a run is of a
    rendering and a config, and a twin renders the same.

    For the evidence a gate takes, ``config`` is the version's own config version: what promotion puts into
    the state (a run with another config is evidence for comparisons, not for a gate). A version that links
    no config is rendered by the registry and run by the app on a model of its own, so a run with any config
    counts.
    """
    runs = await repository.completed_run_scorings(
        prompt=prompt,
        versions=[version.number, *twins],
        config=config[0],
        config_version=config[1],
        dataset_version_id=dataset_version_id,
    )
    unlike: tuple[int, Scoring] | None = None
    for run_id, scorers, pass_rule in runs:
        scored = of_run(scorers, pass_rule)
        if scoring is None or matches(scoring, scored):
            return _Evidence(await repository.get_run(run_id), unlike)
        if unlike is None:
            unlike = (run_id, scored)
    return _Evidence(None, unlike)


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
    the version's own, with the same config condition. A gate that names scorers (and a pass rule) takes only a
    run scored exactly so (``registry.evals.scoring``); one that names none, any run. Under ``no_regression``
    the holder's run it is paired with must be scored exactly as the candidate's run was."""

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
        scoring = gate_scoring(gate)
        try:
            dataset = await DatasetService(session).require(gate.dataset)
            dataset_version = await DatasetService(session).require_version(dataset, gate.dataset_version)
        except NotFoundError as exc:
            return [exc.detail], {"dataset": gate.dataset, "dataset_version": gate.dataset_version}
        where = f"{gate.dataset}@{dataset_version.number}"
        evidence: dict[str, Any] = {"gate": {"state": check.to.value, **_gate_summary(gate)}, "dataset": where}
        evidence["scoring"] = ANY_SCORING if scoring is None else describe(scoring)
        twins = await _twins(repository, version)
        found = await _evidence_run(
            repository, check.name, version, twins, (config, config_version), dataset_version.id, scoring
        )
        run = found.run
        if run is None:
            needed = "any config" if config is None else f"config {config}@{config_version}"
            of = f"version {version.number}"
            if twins:
                of += f" or of same-content {_versions(twins)}"
            failure = f"no completed evaluation run of {of} with {needed} on dataset {where}"
            if scoring is not None:
                failure += " scored as the gate asks"
            if config is None:
                failure += " (it links no model config, so a run with any config counts)"
            if found.unlike is not None and scoring is not None:
                unlike_id, unlike_scoring = found.unlike
                failure += (
                    f": run {unlike_id} was scored with {describe(unlike_scoring)}, "
                    f"the gate asks for {describe(scoring)}"
                )
                evidence["unlike_run_id"] = unlike_id
            return [failure], evidence
        run_scoring = of_run(run.scorers, run.pass_rule)
        evidence["run_scoring"] = describe(run_scoring)
        # An item a scorer failed on is no verdict on its output: left out here, and named below (``_scorer_errors``).
        outcomes = judged(await repository.outcomes(run.id))
        summary = summarize([ok for _, ok, _, _ in outcomes], [score or 0.0 for _, _, score, _ in outcomes])
        comparison: PairedComparison[Any] | None = None
        baseline_label = f"the {check.to.value} version"
        missing = ""
        baseline: EvalRun | None = None
        current: PromptVersion | None = check.current
        if gate.no_regression and current is not None:
            paired, paired_version, holders_own = _baseline_config(version, current, run)
            holder_twins = await _twins(repository, current)
            # Paired item by item, the two runs must be scored alike: the baseline exactly as the candidate's run
            # was (which is as the gate asks), judge versions included.
            baseline_found = await _evidence_run(
                repository, check.name, current, holder_twins, (paired, paired_version), dataset_version.id, run_scoring
            )
            baseline = baseline_found.run
            baseline_label = f"{check.to.value} version {current.number}"
            if not holders_own:
                baseline_label += f" on config {paired}@{paired_version}"
            if baseline is not None:
                baseline_label += f" ({_run_label(baseline, current)})"
                comparison = compare_paired(
                    by_position(judged(await repository.outcomes(baseline.id))), by_position(outcomes)
                )
            elif baseline_found.unlike is not None:
                unlike_id, unlike_scoring = baseline_found.unlike
                missing = (
                    f" scored alike: run {unlike_id} was scored with {describe(unlike_scoring)}, "
                    f"{_run_label(run, version)} with {describe(run_scoring)}"
                )
        compared = [(baseline, current)] if baseline is not None and current is not None else []
        fallbacks = await _fallback_answers(repository, run, version, compared)
        scorer_errors = _scorer_errors(run, version, compared)
        verdict = evaluate_gate(
            Gate(min_pass_rate=gate.min_pass_rate, no_regression=gate.no_regression, alpha=gate.alpha),
            summary,
            comparison,
            run_label=_run_label(run, version),
            baseline_label=baseline_label,
            baseline_exists=current is not None,
            baseline_missing=missing,
        )
        evidence["config"] = f"{run.config}@{run.config_version}"
        if fallbacks:
            evidence["fallback_answers"] = {label: count for label, count, _ in fallbacks}
        if scorer_errors:
            evidence["scorer_errors"] = {label: count for label, count, _ in scorer_errors}
        failures = [*verdict.failures, *(failure for _, _, failure in fallbacks)]
        return [*failures, *(failure for _, _, failure in scorer_errors)], {
            **evidence,
            **verdict.evidence,
            "run_id": run.id,
            "run_prompt_version": run.prompt_version,
        }


async def _fallback_answers(
    repository: EvalRepository,
    run: EvalRun,
    version: PromptVersion,
    baselines: Sequence[tuple[EvalRun, PromptVersion]],
) -> list[tuple[str, int, str]]:
    """(run label, items, failure) for each run of the verdict some of whose items the fallback answered.

    A fallback config is another model: its answers are no evidence of the config the run names, whose
    backend failed on those items, and a pass rate or a paired comparison that holds them measures a mix.
    """
    found = []
    for each, of in [(run, version), *baselines]:
        count = await repository.fallback_answers(each.id)
        if count:
            label = _run_label(each, of)
            found.append(
                (
                    label,
                    count,
                    f"{label}: {count} of {each.total_items} items were answered by the fallback of config "
                    f"{each.config}@{each.config_version}, which is no evidence of that config; "
                    "run it again once its backend answers",
                )
            )
    return found


def _scorer_errors(
    run: EvalRun, version: PromptVersion, baselines: Sequence[tuple[EvalRun, PromptVersion]]
) -> list[tuple[str, int, str]]:
    """(run label, items, failure) for each run of the verdict a scorer (a judge) failed on some items of.

    Those items have no verdict, so the run does not show what the gate asks of all of its items: a gate met
    without them would be met on a judge's breakage, not on the outputs.
    """
    found = []
    for each, of in [(run, version), *baselines]:
        count = each.items_scorer_errors
        if count:
            label = _run_label(each, of)
            found.append(
                (
                    label,
                    count,
                    f"{label}: a scorer failed on {count} of {each.total_items} items (status scorer_error), "
                    "so they have no verdict; fix the scorer and run it again",
                )
            )
    return found


def _versions(numbers: Sequence[int]) -> str:
    if len(numbers) == 1:
        return f"version {numbers[0]}"
    return f"versions {', '.join(str(n) for n in numbers[:-1])} and {numbers[-1]}"


async def _is_admin(session: AsyncSession, actor: Actor) -> bool:
    if actor.key_public_id is None:
        return False
    key = (await session.execute(select(ApiKey).where(ApiKey.public_id == actor.key_public_id))).scalar_one_or_none()
    return key is not None and grants(frozenset(key.scopes), Scope.ADMIN)
