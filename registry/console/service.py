"""What the console's pages show and do, through the prompt and audit services the API uses.

No query or rule of its own: listing, diffing, promoting and rolling back are the prompt
service's; this module shapes their results for pages and turns a stale ``expected_current``
into a ``Conflict`` that says who moved the version.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.models import ApiKey
from registry.auth.principal import Actor
from registry.auth.schemas import CreateApiKey
from registry.auth.service import ApiKeyNotFoundError, ApiKeyService
from registry.completions.components import Completions
from registry.completions.schemas import BudgetOut, SetBudget, UsageRow
from registry.completions.service import BudgetService, UsageService
from registry.console import tokens
from registry.console.diff import content_lines, side_by_side
from registry.console.evals import gate_verdict, prompt_gates, refused_verdict
from registry.console.models import ConsoleSession
from registry.console.repository import ConsoleSessionRepository
from registry.console.schemas import (
    AuditList,
    AuditRow,
    BudgetRow,
    Conflict,
    ExperimentList,
    FieldChangeRow,
    GuardsSummary,
    HistoryRow,
    KeyRow,
    KeysPage,
    PlannedChange,
    PromotionPlan,
    PromptList,
    PromptPage,
    PromptRow,
    UsagePage,
    VersionRow,
    WebhookPage,
    WebhookRow,
    as_text,
)
from registry.console.schemas import DiffPage as DiffView
from registry.console.usage import UsageBy, shown_groups, usage_figures
from registry.db.base import utcnow
from registry.evals.errors import GateFailedError
from registry.experiments.schemas import ExperimentDefinition
from registry.experiments.service import ExperimentService
from registry.guards.report import GuardOutcomeRepository, count_outcomes
from registry.lib.errors import RegistryError
from registry.lib.pagination import PageRequest, decode_cursor, encode_cursor
from registry.lib.promotion import StaleExpectationError, State, StateChange, plan_promotion, plan_rollback
from registry.lib.schema import paginate
from registry.lib.versioned_schemas import PromoteRequest, RollbackRequest
from registry.prompts.models import Prompt, PromptVersion
from registry.prompts.service import PromptLimits, PromptService
from registry.rollouts.repository import RolloutRepository
from registry.rollouts.schemas import RolloutOut
from registry.webhooks.guard import AddressGuard
from registry.webhooks.models import Webhook
from registry.webhooks.schemas import DeliveryOut
from registry.webhooks.service import WebhookService

VERSIONS_SHOWN = 100
HISTORY_SHOWN = 50
ROLLOUTS_SHOWN = 5


def prompt_path(name: str) -> str:
    """A prompt's console URL; ``/`` in names is sent as ``%2F``, as on the API."""
    return f"/console/prompts/{quote(name, safe='')}"


def _planned(changes: list[StateChange]) -> list[PlannedChange]:
    return [PlannedChange(c.number, c.from_state.value, c.to_state.value, c.action) for c in changes]


def _version_row(version: PromptVersion) -> VersionRow:
    config = version.config_version
    return VersionRow(
        number=version.number,
        state=version.state,
        kind=version.kind,
        author=version.author,
        created_at=version.created_at,
        commit_message=version.commit_message,
        config=f"{config.config.name}@{config.number}" if config is not None else None,
    )


class ConsoleService:
    def __init__(self, session: AsyncSession, limits: PromptLimits) -> None:
        self.session = session
        self.prompts = PromptService(session, limits)
        self.audit = AuditLog(session)

    async def _holders(self, prompt: Prompt) -> dict[State, int]:
        holders = await self.prompts.repository.holders(prompt.id)
        return {state: version.number for state, version in holders.items()}

    # -- reading

    async def list_prompts(self, page: PageRequest, *, prefix: str, tag: str) -> PromptList:
        found = await self.prompts.list_resources(page, prefix=prefix or None, tag=tag or None)
        items, cursor = paginate(found, page.limit, lambda p: encode_cursor(p.name))
        held = await self.prompts.repository.holder_numbers([prompt.id for prompt in items])
        rows = []
        for prompt in items:
            holders = held[prompt.id]
            rows.append(
                PromptRow(
                    name=prompt.name,
                    description=prompt.description,
                    tags=list(prompt.tags),
                    latest_version=prompt.latest_version,
                    production=holders.get(State.PRODUCTION),
                    staging=holders.get(State.STAGING),
                    updated_at=prompt.updated_at,
                    updated_by=prompt.updated_by,
                )
            )
        return PromptList(rows=rows, next_cursor=cursor, prefix=prefix, tag=tag)

    async def prompt_page(
        self,
        name: str,
        versions_after: str | None = None,
        history_after: str | None = None,
        rollouts_after: str | None = None,
    ) -> PromptPage:
        """The prompt with a page of its versions and a page of its history, newest first: past the first hundred
        versions, ``versions_after`` (the page's ``next_versions``) turns to the older ones, which are otherwise out
        of reach (their promote, archive and compare among them); past the fifty newest changes, ``history_after``
        (``next_history``) turns to the older changes, as the API's history pages; past the five newest rollouts,
        ``rollouts_after`` (``next_rollouts``) turns to older ones."""
        workflow = self.prompts.workflow
        prompt = await workflow.require(name)
        shown = PageRequest(limit=VERSIONS_SHOWN, after=decode_cursor(versions_after, 1))
        versions, next_versions = paginate(
            await workflow.list_versions(name, shown, state=None), VERSIONS_SHOWN, lambda v: encode_cursor(v.number)
        )
        history_shown = PageRequest(limit=HISTORY_SHOWN, after=decode_cursor(history_after, 1))
        history, next_history = paginate(
            await workflow.history(name, history_shown), HISTORY_SHOWN, lambda t: encode_cursor(t.id)
        )
        rollouts_shown = PageRequest(limit=ROLLOUTS_SHOWN, after=decode_cursor(rollouts_after, 1))
        rollout_rows = RolloutRepository(self.session)
        rollouts, next_rollouts = paginate(
            await rollout_rows.for_prompt(prompt.id, ROLLOUTS_SHOWN + 1, before=rollouts_shown.after_number),
            ROLLOUTS_SHOWN,
            lambda r: encode_cursor(r.id),
        )
        newest_rollout = rollouts[:1] if rollouts_shown.after is None else await rollout_rows.for_prompt(prompt.id, 1)
        holders = await self._holders(prompt)
        return PromptPage(
            name=prompt.name,
            description=prompt.description,
            tags=list(prompt.tags),
            latest_version=prompt.latest_version,
            updated_at=prompt.updated_at,
            updated_by=prompt.updated_by,
            production=holders.get(State.PRODUCTION),
            staging=holders.get(State.STAGING),
            versions=[_version_row(v) for v in versions],
            next_versions=next_versions,
            older_versions=shown.after is not None,
            history=[
                HistoryRow(t.version_number, t.action, t.from_state, t.to_state, t.reason, t.actor, t.created_at)
                for t in history
            ],
            next_history=next_history,
            older_history=history_shown.after is not None,
            rollback_candidates=await self._rollback_candidates(prompt, holders),
            gates=await prompt_gates(self.session, prompt.name, prompt.id),
            rollouts=[RolloutOut.of(r) for r in rollouts],
            next_rollouts=next_rollouts,
            older_rollouts=rollouts_shown.after is not None,
            newest_rollout=RolloutOut.of(newest_rollout[0]) if newest_rollout else None,
        )

    async def _rollback_candidates(self, prompt: Prompt, holders: dict[State, int]) -> list[int]:
        current = holders.get(State.PRODUCTION)
        return [n for n in await self.prompts.repository.production_numbers(prompt.id) if n != current]

    async def diff(self, name: str, from_version: int, to_version: int) -> DiffView:
        found = await self.prompts.diff(name, from_version, to_version)
        prompt = await self.prompts.workflow.require(name)
        before = await self.prompts.workflow.require_version(prompt, from_version)
        after = await self.prompts.workflow.require_version(prompt, to_version)
        return DiffView(
            name=name,
            from_version=from_version,
            to_version=to_version,
            version_numbers=list(range(prompt.latest_version, 0, -1)),
            kind_changed=found.kind_changed,
            hunks=side_by_side(
                content_lines(before.template, before.messages), content_lines(after.template, after.messages)
            ),
            schema_changes=[
                FieldChangeRow(c.field, as_text(c.before), as_text(c.after)) for c in found.input_schema_changes
            ],
            config_from=f"{found.config_from.name}@{found.config_from.version}" if found.config_from else None,
            config_to=f"{found.config_to.name}@{found.config_to.version}" if found.config_to else None,
            config_changes=[FieldChangeRow(c.field, as_text(c.before), as_text(c.after)) for c in found.config_changes],
        )

    async def audit_log(self, page: PageRequest, *, actor: str, resource_type: str, resource_name: str) -> AuditList:
        found = await self.audit.list(
            page, actor=actor or None, resource_type=resource_type or None, resource_name=resource_name or None
        )
        items, cursor = paginate(found, page.limit, lambda e: encode_cursor(e.id))
        return AuditList(
            rows=[
                AuditRow(
                    e.id,
                    e.created_at,
                    e.actor,
                    e.action,
                    e.resource_type,
                    e.resource_name,
                    as_text(e.before) if e.before else "",
                    as_text(e.after) if e.after else "",
                )
                for e in items
            ],
            next_cursor=cursor,
            actor=actor,
            resource_type=resource_type,
            resource_name=resource_name,
        )

    # -- planning: what a confirmation shows, computed by the same pure rules the change applies

    async def plan_promotion(self, name: str, number: int, to: State) -> PromotionPlan:
        workflow = self.prompts.workflow
        prompt = await workflow.require(name)
        target = await workflow.require_version(prompt, number)
        holders = await self._holders(prompt)
        expected = holders.get(to)
        try:
            changes = plan_promotion(
                target=number,
                target_state=State(target.state),
                to=to,
                holders=holders,
                expected_current=expected,
                check_expected=False,
            )
        except RegistryError as exc:
            return PromotionPlan(name, "promote", number, to.value, expected, [], problem=exc.detail)
        problem = None if changes else f"version {number} is already {to.value}"
        gate = None
        if problem is None:
            current = (await self.prompts.repository.holders(prompt.id)).get(to)
            gate = await gate_verdict(self.session, name, target, to, current)
        return PromotionPlan(name, "promote", number, to.value, expected, _planned(changes), problem=problem, gate=gate)

    async def plan_rollback(self, name: str, number: int | None) -> PromotionPlan:
        workflow = self.prompts.workflow
        prompt = await workflow.require(name)
        holders = await self._holders(prompt)
        current = holders.get(State.PRODUCTION)
        candidates = await self._rollback_candidates(prompt, holders)
        number = number if number is not None else (candidates[0] if candidates else None)
        if number is None:
            return PromotionPlan(
                name, "rollback", None, "production", current, [], "no earlier production version to roll back to"
            )
        target = await workflow.require_version(prompt, number)
        try:
            changes = plan_rollback(
                target=number,
                target_state=State(target.state),
                holders=holders,
                expected_current=current,
                check_expected=False,
                was_in_production=number in candidates,
            )
        except RegistryError as exc:
            return PromotionPlan(name, "rollback", number, "production", current, [], exc.detail, candidates)
        return PromotionPlan(name, "rollback", number, "production", current, _planned(changes), None, candidates)

    # -- changing

    async def promote(
        self,
        name: str,
        number: int,
        to: State,
        *,
        expected: int | None,
        reason: str,
        actor: Actor,
        override_gate: str = "",
    ) -> Conflict | PromotionPlan | None:
        """Promote as the API does; a ``Conflict`` when the state moved since the page was read, the plan
        again with the gate's evidence when an evaluation gate refused it."""
        request = PromoteRequest(
            to=to.value,  # type: ignore[arg-type]  # State values are the Literal's
            expected_current=expected if to in (State.STAGING, State.PRODUCTION) else UNSET,
            reason=reason or None,
            override_gate=override_gate or None,
        )
        try:
            await self.prompts.workflow.promote(name, number, request, actor)
        except GateFailedError as refused:
            plan = await self.plan_promotion(name, number, to)
            verdict = refused_verdict(plan.gate.gate, refused) if plan.gate is not None else None
            return replace(plan, gate=verdict, gate_refused=True, reason=reason, override_gate=override_gate)
        except StaleExpectationError as exc:
            query = urlencode({"to": to.value})
            return await self._conflict(
                name, to, expected, exc, f"{prompt_path(name)}/versions/{number}/promote?{query}"
            )
        return None

    async def rollback(
        self, name: str, number: int, *, expected: int | None, reason: str, actor: Actor
    ) -> Conflict | PromotionPlan | None:
        """Roll back as the API does; the dialog again, saying so, when the reason is blank (the API refuses an empty
        one, and a form of spaces passes a browser's ``required``)."""
        if not reason:
            plan = await self.plan_rollback(name, number)
            return replace(plan, form_error="Give the reason production goes back: the history keeps it.")
        request = RollbackRequest(reason=reason, version=number, expected_current=expected)
        try:
            await self.prompts.workflow.rollback(name, request, actor)
        except StaleExpectationError as exc:
            retry = f"{prompt_path(name)}/rollback?{urlencode({'version': number})}"
            return await self._conflict(name, State.PRODUCTION, expected, exc, retry)
        return None

    async def _conflict(
        self, name: str, state: State, expected: int | None, exc: StaleExpectationError, retry_url: str
    ) -> Conflict:
        """Who moved ``state`` last, from the prompt's history."""
        history = await self.prompts.workflow.history(name, PageRequest(limit=HISTORY_SHOWN, after=None))
        last = next((t for t in history if state.value in (t.to_state, t.from_state)), None)
        return Conflict(
            name=name,
            state=state.value,
            expected=expected,
            current=exc.extra.get("current"),
            moved_by=last.actor if last else None,
            moved_at=last.created_at if last else None,
            reason=last.reason if last else None,
            retry_url=retry_url,
        )


class ConsoleExperiments:
    """The experiment list, from the experiment service the API uses."""

    def __init__(self, session: AsyncSession, limits: PromptLimits) -> None:
        self.experiments = ExperimentService(session, limits)

    async def list_experiments(self, page: PageRequest, *, status: str) -> ExperimentList:
        found = await self.experiments.list_experiments(page, status=status or None, prompt=None)
        items, cursor = paginate(found, page.limit, lambda e: encode_cursor(e.key))
        return ExperimentList([ExperimentDefinition.of(e) for e in items], cursor, status)


USAGE_ROWS = 10_000  # as GET /v1/usage: a window with more (day, group) rows says so
GUARDED_ROWS = 20_000  # guarded completions counted per guard on the usage page (the newest of the period)
KEYS_PAGE = 500  # keys read a page at a time for the usage page's labels and budgets
SECRET_WAITS = timedelta(minutes=5)  # a new key's secret waits this long for the page that shows it once


def _budget_row(budget: BudgetOut, name: str) -> BudgetRow:
    return BudgetRow(
        key=budget.key,
        name=name,
        monthly_tokens=budget.monthly_tokens,
        monthly_cost=budget.monthly_cost,
        used_tokens=budget.used_tokens,
        used_cost=budget.used_cost,
        month_start=budget.month_start,
    )


class ConsoleAccess:
    """Usage, budgets and API keys, through the usage, budget and key services the API uses."""

    def __init__(self, session: AsyncSession, completions: Completions) -> None:
        self.usage = UsageService(session, completions)
        self.budgets = BudgetService(session, completions.budgets)
        self.keys = ApiKeyService(session)
        self.guard_outcomes = GuardOutcomeRepository(session)
        self.shown_once = ConsoleSessionRepository(session)

    async def usage_page(self, *, by: UsageBy, days: int, last: date, show_keys: bool) -> UsagePage:
        """Tokens and cost per day of the ``days`` ending ``last``; key names and budgets for admins only."""
        first = last - timedelta(days=days - 1)
        window: dict[str, Any] = {
            "since": datetime(first.year, first.month, first.day, tzinfo=UTC),
            "until": datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1),
            "prompt": None,
            "key": None,
            "limit": USAGE_ROWS,
        }
        # A row per day of the largest groups and one per day for the rest, not one per day and group.
        totals, truncated = await self.usage.report([by], **window)  # first: it writes this process's buffer
        window["flush"] = False
        keys = await self._all_keys(include_revoked=True) if show_keys else []
        labels = {k.public_id: f"{k.name} ({k.public_id})" for k in keys} if by == "key" else {}
        shown = shown_groups(totals, by=by, labels=labels)
        among = None if shown is None else (by, shown)
        rows, rows_truncated = await self.usage.report(["day", by], **window, among=among)
        other: list[UsageRow] | None = None
        if among is not None:
            other, other_truncated = await self.usage.report(["day"], **window, among=among, excluding=True)
            rows_truncated = rows_truncated or other_truncated
        figures = usage_figures(rows, by=by, first=first, last=last, labels=labels, other=other)
        truncated = truncated or rows_truncated
        budgets = None
        if show_keys:
            budgets = list((await self._budgets([k for k in keys if k.revoked_at is None])).values())
        outcomes, guards_truncated = await self.guard_outcomes.outcomes(
            since=window["since"], until=window["until"], limit=GUARDED_ROWS
        )
        guards = GuardsSummary(count_outcomes(outcomes), len(outcomes), guards_truncated)
        return UsagePage(by, days, first, last, figures, truncated, budgets, guards)

    async def _all_keys(self, *, include_revoked: bool) -> list[ApiKey]:
        """Every key, a page at a time: the usage page names each key and lists each budget, past the first 500 too."""
        keys: list[ApiKey] = []
        page = PageRequest(limit=KEYS_PAGE, after=None)
        while True:
            found = await self.keys.list_keys(page, include_revoked=include_revoked)
            keys.extend(found[:KEYS_PAGE])
            if len(found) <= KEYS_PAGE:
                return keys
            page = PageRequest(limit=KEYS_PAGE, after=(keys[-1].id,))

    async def _budgets(self, keys: list[ApiKey]) -> dict[str, BudgetRow]:
        """Budgeted keys only: one query for the budgets, then each budgeted key's spend."""
        names = {k.public_id: k.name for k in keys}
        return {b.key: _budget_row(b, names[b.key]) for b in await self.budgets.budgeted(keys)}

    async def keys_page(self, page: PageRequest, *, include_revoked: bool) -> KeysPage:
        found = await self.keys.list_keys(page, include_revoked=include_revoked)
        items, cursor = paginate(found, page.limit, lambda k: encode_cursor(k.id))
        budgets = await self._budgets([k for k in items if k.revoked_at is None])
        return KeysPage([KeyRow.with_budget(k, budgets.get(k.public_id)) for k in items], cursor, include_revoked)

    async def key(self, public_id: str) -> KeyRow:
        key = await self.keys.repository.get_by_public_id(public_id)
        if key is None:
            raise ApiKeyNotFoundError(f"no API key has id '{public_id}'")
        budget = _budget_row(await self.budgets.get(public_id), key.name) if key.revoked_at is None else None
        return KeyRow.with_budget(key, budget)

    async def create_key(
        self, data: CreateApiKey, actor: Actor, *, session_token: str, now: datetime | None = None
    ) -> tuple[KeyRow, str]:
        """The new key and the id of its secret, kept sealed for a few minutes for the session's next page to show
        once (``take_new_secret``): the form's answer redirects there, so a reload shows no secret and makes no
        second key."""
        key, secret = await self.keys.create_key(
            data.name, data.scopes, actor, rate_limit_per_minute=data.rate_limit_per_minute
        )
        now = now or utcnow()
        shown_id = tokens.new_token()
        await self.shown_once.add(
            ConsoleSession(
                token_digest=tokens.shown_once_digest(session_token, shown_id),
                sealed_key=tokens.seal(tokens.shown_once_seal_key(session_token, shown_id), secret),
                key_public_id=key.public_id,
                created_at=now,
                expires_at=now + SECRET_WAITS,
            )
        )
        return KeyRow.with_budget(key, None), shown_id

    async def take_new_secret(
        self, public_id: str, *, session_token: str, shown_id: str, now: datetime | None = None
    ) -> str | None:
        """The secret of the key ``create_key`` made in this session, once; None after that, or from another
        session, or once it waited too long."""
        row = await self.shown_once.take_live(tokens.shown_once_digest(session_token, shown_id), now or utcnow())
        if row is None or row.key_public_id != public_id:
            return None
        return tokens.unseal(tokens.shown_once_seal_key(session_token, shown_id), row.sealed_key)

    async def revoke_key(self, public_id: str, actor: Actor) -> None:
        await self.keys.revoke_key(public_id, actor)

    async def set_rate_limit(self, public_id: str, per_minute: int | None, actor: Actor) -> None:
        await self.keys.set_rate_limit(public_id, per_minute, actor)

    async def set_budget(self, public_id: str, budget: SetBudget, actor: Actor) -> None:
        await self.budgets.set(public_id, budget, actor)


def _webhook_row(webhook: Webhook) -> WebhookRow:
    """Everything but the signing secret, which only its creation response shows."""
    return WebhookRow(
        id=webhook.id,
        url=webhook.url,
        events=list(webhook.event_types),
        description=webhook.description,
        created_at=webhook.created_at,
        created_by=webhook.created_by,
        enabled=webhook.disabled_at is None,
        disabled_at=webhook.disabled_at,
        disabled_reason=webhook.disabled_reason,
        consecutive_failures=webhook.consecutive_failures,
    )


class ConsoleWebhooks:
    """Webhooks and their delivery log, through the webhook service the API uses."""

    def __init__(self, session: AsyncSession, guard: AddressGuard) -> None:
        self.webhooks = WebhookService(session, guard)

    async def list_webhooks(self, page: PageRequest) -> tuple[list[WebhookRow], str | None]:
        items, cursor = paginate(await self.webhooks.list(page), page.limit, lambda w: encode_cursor(w.id))
        return [_webhook_row(w) for w in items], cursor

    async def webhook_page(self, webhook_id: int, page: PageRequest, *, status: str) -> WebhookPage:
        webhook = await self.webhooks.require(webhook_id)
        found = await self.webhooks.deliveries(webhook_id, page, status=status or None)
        items, cursor = paginate(found, page.limit, lambda d: encode_cursor(d.id))
        return WebhookPage(_webhook_row(webhook), [DeliveryOut.of(d) for d in items], cursor, status)

    async def redeliver(self, webhook_id: int, delivery_id: int, actor: Actor) -> None:
        await self.webhooks.redeliver(webhook_id, delivery_id, actor)

    async def set_enabled(self, webhook_id: int, enabled: bool, actor: Actor) -> None:
        await self.webhooks.set_enabled(webhook_id, enabled, actor)
