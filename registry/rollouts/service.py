"""Rollouts: creating them, moving them by hand, and the check that moves them on its own.

A rollout is backed by an experiment of kind ``rollout`` (variants ``production`` and ``candidate``),
created and started here through the experiments service: the experiments' router then routes the
prompt's production traffic (renders and completions alike) by the rollout's percentage assignment,
exposures and completion metrics are collected and aggregated as for any experiment, and each step
is a phase, so a check compares units split at the current share; the split's sequential test carries
across the steps (each earlier phase's Bayes factor multiplied in, the least p-value so far read back from
the recorded evidence), so it may be repeated at every check of every step. Ending a rollout stops that
experiment (traffic returns to production); completing it stops it with the candidate as winner,
which is the experiments' normal promotion, through the evaluation gate.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.configs.models import ModelConfigVersion
from registry.db.base import utcnow
from registry.experiments.errors import ExperimentConflictError
from registry.experiments.models import Experiment
from registry.experiments.results import variant_arm
from registry.experiments.schemas import CreateExperiment, StopExperiment, VariantIn
from registry.experiments.service import ExperimentService, running_variant_refusal, version_inputs
from registry.experiments.variables import production_refusals
from registry.lib.changes import Change, record_change, savepoint
from registry.lib.errors import ConflictError, FieldError, InvalidInputError, NotFoundError, RegistryError
from registry.lib.pagination import PageRequest
from registry.lib.promotion import State
from registry.outbox.events import emit_event
from registry.prompts.models import PromptVersion
from registry.prompts.schemas import LinkedConfig
from registry.prompts.service import PromptLimits
from registry.rollouts.models import Rollout, RolloutEvent
from registry.rollouts.plan import ARMS, Action, Step, lacking_data, next_action, step_problems
from registry.rollouts.repository import RolloutLeaseLostError, RolloutRepository
from registry.rollouts.schemas import CreateRollout, GuardrailIn
from registry.stats.guardrails import Guardrail, GuardrailDecision, decide, rollout_levels

CHECKER = Actor("rollout-check")

Units = tuple[int, int]  # (production, candidate)


class RolloutNotFoundError(NotFoundError):
    type = "rollout_not_found"
    title = "Rollout not found"


class RolloutActionNotFoundError(NotFoundError):
    type = "rollout_action_not_found"
    title = "No such rollout action"


class RolloutConflictError(ConflictError):
    """A rollout of the prompt is running (or paused): another rollout, a promotion or a rollback must wait."""

    type = "rollout_conflict"
    title = "Conflicts with a rollout"


class RolloutStateError(ConflictError):
    type = "rollout_state"
    title = "Not allowed in the rollout's status"


# Variant weights must be positive: at 100% production keeps this much, which no hash reaches (GrowthBook's
# hashes are multiples of 1/10000 below 1, and the router compares them with the candidate's normalized weight).
MIN_WEIGHT = 1e-6


def weights_at(share: float) -> list[float]:
    """The backing experiment's weights (production, candidate) at a share."""
    return [max(1.0 - share, MIN_WEIGHT), share]


def steps_of(rollout: Rollout) -> list[Step]:
    return [Step(s["share"], s["min_seconds"], s["min_units"]) for s in rollout.steps]


class RolloutLock:
    """The ``PromotionLock`` of rollouts: while one runs, the prompt's production label is the rollout's. While a
    plain experiment runs, a version may enter production only if each variant can serve its callers
    (``running_variant_refusal``)."""

    async def check(self, session: AsyncSession, resource_type: str, name: str, entering: Any = None) -> None:
        if resource_type != "prompt":
            return
        active = await RolloutRepository(session).active_for_prompt(name)
        if active is not None:
            raise RolloutConflictError(
                f"prompt '{name}' has rollout {active.id} {active.status} (candidate version "
                f"{active.candidate_version}): abort it, or let it finish, before promoting or rolling back"
            )
        if isinstance(entering, PromptVersion):
            refusal = await running_variant_refusal(session, entering)
            if refusal is not None:
                raise ExperimentConflictError(f"version {entering.number} cannot enter production: {refusal}")


class RolloutService:
    def __init__(self, session: AsyncSession, prompt_limits: PromptLimits) -> None:
        self.session = session
        self.repository = RolloutRepository(session)
        self.experiments = ExperimentService(session, prompt_limits)
        self.audit = AuditLog(session)

    # -- reading

    async def require(self, rollout_id: int, *, for_update: bool = False) -> Rollout:
        rollout = await self.repository.get(rollout_id, for_update=for_update)
        if rollout is None:
            raise RolloutNotFoundError(f"no rollout has id {rollout_id}")
        return rollout

    async def with_events(self, rollout_id: int) -> tuple[Rollout, list[RolloutEvent]]:
        rollout = await self.require(rollout_id)
        return rollout, list(await self.repository.events(rollout.id))

    async def list_for_prompt(self, name: str, page: PageRequest) -> Sequence[Rollout]:
        """A page of the prompt's rollouts, newest first: ``page.limit + 1`` rows, the extra saying there are more."""
        prompt = await self.experiments.prompts.workflow.require(name)
        return await self.repository.for_prompt(prompt.id, page.limit + 1, before=page.after_number)

    # -- creating

    async def create(self, name: str, data: CreateRollout, actor: Actor) -> Rollout:
        workflow = self.experiments.prompts.workflow
        prompt = await workflow.require(name, for_update=True)  # serializes rollouts of one prompt
        active = await self.repository.active_for_prompt(name)
        if active is not None:
            raise RolloutConflictError(f"rollout {active.id} is already {active.status} on prompt '{name}'")
        steps = [Step(s.share, s.min_seconds, s.min_units) for s in data.steps]
        problems = [FieldError(f, m) for f, m in step_problems(steps)]
        metrics = [g.metric for g in data.guardrails]
        if len(set(metrics)) != len(metrics):
            problems.append(FieldError("guardrails", "each metric may be a guardrail once"))
        known = await self.experiments.metrics.by_keys(metrics)
        guardrails: list[GuardrailIn] = []
        for i, guardrail in enumerate(data.guardrails):
            metric = known.get(guardrail.metric)
            if metric is None:
                problems.append(FieldError(f"guardrails[{i}].metric", f"no metric is named '{guardrail.metric}'"))
            elif guardrail.direction not in (None, metric.direction):
                problems.append(
                    FieldError(
                        f"guardrails[{i}].direction",
                        f"metric '{metric.key}' says {metric.direction} values are better; leave it out to use that",
                    )
                )
            else:
                guardrails.append(msgspec.structs.replace(guardrail, direction=metric.direction))
        config_version: ModelConfigVersion | None = None
        if data.config is not None:
            try:
                config_version = await self.experiments.prompts.configs.resolve_ref(data.config)
            except InvalidInputError as refused:  # named as the rollout's field, not the backing experiment's
                problems.append(FieldError("config", refused.detail))
        config_id = config_version.id if config_version is not None else None
        candidate: PromptVersion | None = None
        production = (await workflow.repository.holders(prompt.id)).get(State.PRODUCTION)
        if production is None:
            problems.append(FieldError("candidate_version", f"prompt '{name}' has no production version to compare"))
        elif production.number == data.candidate_version and data.config is None:
            problems.append(FieldError("candidate_version", "is the production version already"))
        elif (
            production.number == data.candidate_version
            and config_id is not None  # None: its config was refused above
            and config_id == production.config_version_id
        ):
            problems.append(
                FieldError("config", "is the production version's own config already: nothing would change")
            )
        else:
            candidate = await workflow.repository.get_version(prompt.id, data.candidate_version)
            if candidate is None:
                problems.append(
                    FieldError("candidate_version", f"prompt '{name}' has no version {data.candidate_version}")
                )
            else:
                problems += [
                    FieldError("candidate_version", refusal)
                    for refusal in production_refusals(version_inputs(production), version_inputs(candidate))
                ]
                unpromotable = await self.experiments.unpromotable(prompt.id, candidate)
                if unpromotable is not None:
                    problems.append(FieldError("candidate_version", unpromotable))
        if problems:
            raise InvalidInputError("the rollout is invalid", errors=problems)
        assert production is not None
        # The config the candidate runs with (the one named, else its version's own) is the one the rollout's end
        # promotes to production: a retired one is refused now, not after it has taken production's traffic.
        configs = self.experiments.prompts.configs
        if config_version is not None:
            await configs.refuse_archived(config_version, use=f"a rollout of prompt '{name}'")
        elif candidate is not None:
            await configs.refuse_archived(
                candidate.config_version, field="candidate_version", use=f"a rollout of prompt '{name}'"
            )
        key = f"rollout-{secrets.token_hex(6)}"
        experiment = await self.experiments.create(
            CreateExperiment(
                key=key,
                prompt=name,
                description=f"rollout of version {data.candidate_version} of prompt '{name}'",
                variants=[
                    VariantIn(key="production", prompt_version=production.number),
                    VariantIn(key="candidate", prompt_version=data.candidate_version, config=data.config),
                ],
                hash_seed=key,  # fixed for the rollout's life: a unit keeps its side as the share grows
                primary_metric=metrics[0],
                guardrail_metrics=metrics[1:],
                correction="none",
                alpha=data.alpha,
                sequential=True,
            ),
            actor,
        )
        experiment.kind = "rollout"
        await self._check_gate(experiment, production, actor)
        for variant, weight in zip(experiment.variants, weights_at(steps[0].share), strict=True):
            variant.weight = weight
        experiment = await self.experiments.start(key, actor)
        config = LinkedConfig.of(experiment.variants[1].config_version, with_fallback=False)
        now = utcnow()
        rollout = Rollout(
            prompt_id=prompt.id,
            experiment_id=experiment.id,
            candidate_version=data.candidate_version,
            production_version=production.number,
            config=config.name if config else None,
            config_version=config.version if config else None,
            steps=[asdict(s) for s in steps],
            guardrails=[msgspec.to_builtins(g) for g in guardrails],
            alpha=data.alpha,
            status="running",
            step=0,
            step_started_at=now,
            created_at=now,
            created_by=actor.name,
            updated_at=now,
            updated_by=actor.name,
        )
        await self.repository.add(rollout)
        rollout = await self.require(rollout.id)
        await self._record(rollout, "started", actor, {"reason": data.reason})
        return rollout

    async def _check_gate(self, experiment: Experiment, production: PromptVersion, actor: Actor) -> None:
        """Refuse a candidate the promotion gate would refuse at the rollout's end, judged now as the end judges the
        version it would promote (with the rollout's config): the rollout would carry it to every unit and pause
        there, serving production's traffic with a version its evidence does not admit. A gate set or evidence
        lost later still pauses the rollout at its end."""
        refusal = (await self.experiments.winner_refusals(experiment, production, actor)).get("candidate")
        if refusal is not None:
            raise InvalidInputError(
                "the rollout's candidate would be refused by the promotion gate",
                errors=[
                    FieldError("candidate_version", f"its promotion at the rollout's end would be refused: {refusal}")
                ],
            )

    # -- by hand

    async def move(
        self, rollout_id: int, action: str, reason: str | None, actor: Actor, *, expected_step: int | None = None
    ) -> Rollout:
        """``expected_step``: the step the caller saw; the move is refused when the rollout is at another."""
        moves = {"pause": self.pause, "resume": self.resume, "abort": self.abort, "advance": self.advance}
        move = moves.get(action)
        if move is None:
            raise RolloutActionNotFoundError(f"a rollout has no action '{action}'; use one of {', '.join(moves)}")
        if expected_step is not None:
            rollout = await self.require(rollout_id, for_update=True)  # held until the move below commits
            if rollout.step != expected_step:
                raise RolloutStateError(
                    f"rollout {rollout_id} is at step {rollout.step}, not {expected_step}: read it again before "
                    f"you {action} it",
                    errors=[FieldError("expected_step", f"the rollout is at step {rollout.step}")],
                )
        return await move(rollout_id, reason, actor)

    async def pause(self, rollout_id: int, reason: str | None, actor: Actor) -> Rollout:
        rollout = await self._active(rollout_id, "running")
        rollout.status = "paused"
        rollout.reason = reason
        await self._record(rollout, "paused", actor, {"reason": reason})
        return rollout

    async def resume(self, rollout_id: int, reason: str | None, actor: Actor) -> Rollout:
        rollout = await self._active(rollout_id, "paused")
        rollout.status = "running"
        rollout.reason = None
        await self._record(rollout, "resumed", actor, {"reason": reason})
        return rollout

    async def abort(self, rollout_id: int, reason: str | None, actor: Actor) -> Rollout:
        rollout = await self._active(rollout_id, "running", "paused")
        await self._end(rollout, "aborted", reason or "aborted by hand", actor)
        return rollout

    async def advance(self, rollout_id: int, reason: str | None, actor: Actor) -> Rollout:
        """The next step at once (after the last, the promotion), whatever the current step's minimums."""
        rollout = await self._active(rollout_id, "running", "paused")
        if rollout.step == len(rollout.steps) - 1:
            await self._promote(rollout, actor, {"reason": reason, "by_hand": True})
        else:
            await self._set_step(rollout, rollout.step + 1, actor, {"reason": reason, "by_hand": True})
        return rollout

    async def _active(self, rollout_id: int, *statuses: str) -> Rollout:
        rollout = await self.require(rollout_id, for_update=True)
        if rollout.status not in statuses:
            raise RolloutStateError(f"rollout {rollout_id} is {rollout.status}; this needs it {' or '.join(statuses)}")
        return rollout

    # -- the check

    async def check(self, rollout_id: int, now: datetime, *, lease: str, lease_until: datetime) -> Action | None:
        """Test the guardrails and the split at the current step, and act on the result (see ``next_action``).

        Only while ``lease`` is still the rollout's: renewed first, in this transaction, so a checker that
        stalled past its lease and was taken over (even by one of its own name) raises
        ``RolloutLeaseLostError`` before it reads or writes anything, and the caller rolls back.
        """
        if not await self.repository.renew(rollout_id, lease, lease_until):
            raise RolloutLeaseLostError(f"rollout {rollout_id} is no longer held by lease {lease}")
        rollout = await self.require(rollout_id, for_update=True)
        if rollout.status != "running":
            return None
        unpromotable = await self._candidate_unpromotable(rollout)
        if unpromotable is not None:  # archived meanwhile: no traffic for a version that can never be promoted
            await self._end(rollout, "rolled_back", unpromotable, CHECKER)
            return Action("rollback", rollout.step, [unpromotable])
        experiment = await self.experiments.require(rollout.experiment.key)
        decision, units, totals, observed = await self._decide(rollout, experiment)
        # At full share production takes no traffic: the candidate alone must have been seen.
        lacking = lacking_data(observed, ARMS if rollout.steps[rollout.step]["share"] < 1 else ("candidate",))
        steps = steps_of(rollout)
        action = next_action(
            steps,
            rollout.step,
            started_at=rollout.step_started_at,
            now=now,
            units=sum(units),
            decision=decision,
            lacking=lacking,
        )
        evidence = _evidence(rollout, decision, units, totals, action, now, observed, lacking)
        rollout.evidence = evidence
        if action.kind == "rollback":
            await self._end(rollout, "rolled_back", "; ".join(action.reasons), CHECKER, {"evidence": evidence})
        elif action.kind == "advance":
            await self._set_step(rollout, action.step, CHECKER, {"evidence": evidence}, now)
        elif action.kind == "promote":
            await self._promote(rollout, CHECKER, {"evidence": evidence})
        else:
            await self.session.flush()
        return action

    async def _decide(
        self, rollout: Rollout, experiment: Experiment
    ) -> tuple[GuardrailDecision, Units, Units, dict[str, dict[str, int]]]:
        """The decision, the units of the current step, the units of all steps together (per variant), and each
        guardrail's units per arm in the current step as its test counts them (the evidence a step needs)."""
        data = await self.experiments.phase_data(experiment, None)
        units = (data.units.get("production", 0), data.units.get("candidate", 0))
        earlier = await self._earlier_splits(experiment, data.phase)
        totals = (units[0] + sum(u[0] for u, _ in earlier), units[1] + sum(u[1] for u, _ in earlier))
        share = rollout.steps[rollout.step]["share"]
        previous = _previous_srm_p_value(rollout)
        by_key = {m.key: m for m in data.metrics}
        observed = {
            g["metric"]: {arm: variant_arm(data, by_key[g["metric"]], arm, False).n for arm in ARMS}
            for g in rollout.guardrails
        }
        if share >= 1:  # no production arm left to compare with: the step waits out its minimums and the data
            return GuardrailDecision(False, [], previous, False), units, totals, observed
        arms = [
            (
                Guardrail(g["metric"], g["direction"] == "lower", g["tolerance"], g["relative"]),
                variant_arm(data, by_key[g["metric"]], "production", False),
                variant_arm(data, by_key[g["metric"]], "candidate", False),
            )
            for g in rollout.guardrails
        ]
        compared_steps = sum(1 for step in rollout.steps if step["share"] < 1)
        level, split_level = rollout_levels(rollout.alpha, compared_steps=compared_steps, guardrails=len(arms))
        decision = decide(
            arms,
            units=units,
            weights=(1.0 - share, share),
            alpha=level,
            srm_threshold=split_level,
            tuning=experiment.sequential_tuning,
            earlier_splits=[(u, w) for u, w in earlier if min(w) > 10 * MIN_WEIGHT],
            previous_srm_p_value=previous,
        )
        return decision, units, totals, observed

    async def _earlier_splits(self, experiment: Experiment, current: int) -> list[tuple[Units, tuple[float, float]]]:
        """Each earlier step's units (production, candidate) and weights, as its phase of the experiment recorded them.

        Read from the database at every check, so the split's sequential test carries across steps (and restarts).
        """
        found = []
        for phase in sorted(experiment.phases, key=lambda p: p.number):
            if phase.number >= current:
                continue
            counts = await self.experiments.statistics.variant_counts(experiment.id, phase.number)
            found.append(
                (
                    (counts.get("production", 0), counts.get("candidate", 0)),
                    (float(phase.weights[0]), float(phase.weights[1])),
                )
            )
        return found

    # -- moving

    async def _set_step(
        self, rollout: Rollout, step: int, actor: Actor, detail: dict[str, Any], now: datetime | None = None
    ) -> None:
        share = rollout.steps[step]["share"]
        experiment = await self.experiments.require(rollout.experiment.key, for_update=True)
        await self.experiments.set_weights(experiment, weights_at(share), f"rollout step {step + 1}: {share:g}")
        rollout.step = step
        rollout.step_started_at = now or utcnow()
        await self._record(rollout, "advanced", actor, detail)

    async def _end(
        self, rollout: Rollout, status: str, reason: str, actor: Actor, detail: dict[str, Any] | None = None
    ) -> None:
        """Traffic back to production: the backing experiment stops without a winner."""
        rollout.status = status
        rollout.reason = reason
        rollout.ended_at = utcnow()
        rollout.lease_owner = None
        await self.session.flush()
        await self.experiments.stop(
            rollout.experiment.key,
            StopExperiment(reason=f"rollout {status}: {reason}"[:1000]),
            actor,
            for_rollout=True,
        )
        await self._record(rollout, status, actor, {"reason": reason, **(detail or {})})

    async def _promote(self, rollout: Rollout, actor: Actor, detail: dict[str, Any]) -> None:
        """The candidate (with its config) becomes production through the normal promotion and its gate.

        A refused promotion pauses the rollout at full share with the refusal as its reason; so does a candidate
        archived meanwhile that was never in production, whose promotion (as a new version carrying the rollout's
        config, or a rollback) would bring back a version taken out of use.
        """
        unpromotable = await self._candidate_unpromotable(rollout)
        if unpromotable is not None:
            await self._refuse_promotion(rollout, actor, detail, unpromotable)
            return
        rollout.status = "completed"  # no longer holds the label: the promotion below may move it
        await self.session.flush()
        try:
            async with savepoint(self.session):
                _, promoted = await self.experiments.stop(
                    rollout.experiment.key,
                    StopExperiment(winner="candidate", reason=f"rollout {rollout.id} completed"),
                    actor,
                    for_rollout=True,
                )
        except RegistryError as exc:
            # What the savepoint touched was expired by its rollback: read it back before it is read again.
            await self.session.refresh(rollout.experiment)
            await self.session.refresh(rollout.prompt)
            await self._refuse_promotion(rollout, actor, detail, str(exc))
            return
        rollout.ended_at = utcnow()
        rollout.lease_owner = None
        promoted_version = promoted.version if promoted is not None else None
        await self._record(rollout, "completed", actor, {**detail, "promoted_version": promoted_version})

    async def _refuse_promotion(self, rollout: Rollout, actor: Actor, detail: dict[str, Any], refusal: str) -> None:
        rollout.status = "paused"
        rollout.reason = f"the candidate's promotion was refused: {refusal}"
        await self._record(rollout, "paused", actor, {**detail, "reason": rollout.reason})

    async def _candidate_unpromotable(self, rollout: Rollout) -> str | None:
        workflow = self.experiments.prompts.workflow
        return await self.experiments.unpromotable(
            rollout.prompt_id, await workflow.require_version(rollout.prompt, rollout.candidate_version)
        )

    async def _record(self, rollout: Rollout, action: str, actor: Actor, detail: dict[str, Any]) -> None:
        """The rollout's history, the prompt's audit log, a webhook event and the change feed."""
        now = utcnow()
        rollout.updated_at = now
        rollout.updated_by = actor.name
        name = rollout.prompt.name
        share = rollout.steps[rollout.step]["share"]
        await self.repository.add(
            RolloutEvent(
                rollout_id=rollout.id, at=now, action=action, step=rollout.step, actor=actor.name, detail=detail
            )
        )
        summary = {
            "rollout": rollout.id,
            "prompt": name,
            "status": rollout.status,
            "step": rollout.step,
            "share": share,
            "candidate_version": rollout.candidate_version,
            "production_version": rollout.production_version,
            "reason": rollout.reason,
        }
        await self.audit.record(actor, f"rollout.{action}", "prompt", name, after={**summary, **detail})
        await emit_event(self.session, f"rollout.{action}", name, {**summary, **detail}, actor)
        record_change(self.session, Change("prompt", name, f"rollout_{action}"))


def _previous_srm_p_value(rollout: Rollout) -> float:
    """The split's always-valid p-value at the last check (recorded in the rollout's evidence), 1 before any.

    Evidence without a Bayes factor came from the fixed-threshold test that preceded the sequential one: not carried.
    """
    evidence = rollout.evidence or {}
    if "srm_log_bayes_factor" not in evidence:
        return 1.0
    return float(evidence["srm_p_value"])


def _evidence(
    rollout: Rollout,
    decision: GuardrailDecision,
    units: Units,
    totals: Units,
    action: Action,
    now: datetime,
    observed: dict[str, dict[str, int]],
    lacking: dict[str, list[str]],
) -> dict[str, Any]:
    return {
        "checked_at": now.isoformat(),
        "step": rollout.step,
        "share": rollout.steps[rollout.step]["share"],
        "units": {"production": units[0], "candidate": units[1]},  # in the current step
        # In all steps so far: each step's units summed (a unit seen in two steps counts in each).
        "units_total": {"production": totals[0], "candidate": totals[1]},
        "srm_p_value": decision.srm_p_value,  # always valid: the least over all checks of the rollout
        "srm_log_bayes_factor": decision.srm_log_bayes_factor,
        "srm_failed": decision.srm_failed,
        "guardrails": [
            {
                "metric": c.metric,
                "estimate": c.estimate,
                "worst_bound": c.worst_bound,
                "failed": c.failed,
                "note": c.note,
            }
            for c in decision.checks
        ],
        # Each guardrail's units with a value per arm in the current step, and those without data that hold it.
        "observed": observed,
        "lacking_data": [{"metric": metric, "arms": arms} for metric, arms in lacking.items()],
        "action": action.kind,
        "reasons": action.reasons,
    }
