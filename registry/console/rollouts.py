"""A rollout's console page: its candidate, steps, history, and per guardrail a plot of its checks.

A check records its evidence on the rollout (the latest) and, when it moves the rollout (a step,
a rollback, the promotion), on that event too; so each guardrail's plot has a row per check that
moved the rollout, and the latest check's row last. Each row is the estimate of the candidate's
effect with its always-valid one-sided interval up to the worst bound; the tolerated degradation is
the reference the worst bound must stay within.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession

from registry.console import formatting
from registry.console.charts import IntervalRow, interval_plot
from registry.prompts.service import PromptLimits
from registry.rollouts.models import ACTIVE_STATUSES
from registry.rollouts.schemas import RolloutOut
from registry.rollouts.service import RolloutService


def checks_of(rollout: RolloutOut) -> list[dict[str, Any]]:
    """The evidence of every recorded check, oldest first (each once, by its time)."""
    found = [e.detail["evidence"] for e in rollout.events or [] if isinstance(e.detail.get("evidence"), dict)]
    if rollout.evidence is not None:
        found.append(rollout.evidence)
    seen: set[str] = set()
    checks = []
    for evidence in found:
        if evidence["checked_at"] not in seen:
            seen.add(evidence["checked_at"])
            checks.append(evidence)
    return checks


def guardrail_chart(guardrail: dict[str, Any], checks: list[dict[str, Any]], chart_id: str) -> Markup | None:
    """The guardrail's estimate and worst bound at each check, with the tolerated degradation; None before any."""
    metric, relative = guardrail["metric"], guardrail["relative"]
    lower = guardrail["direction"] == "lower"
    limit = guardrail["tolerance"] if lower else -guardrail["tolerance"]

    def text(value: float) -> str:
        return formatting.signed_percent(value) if relative else formatting.estimate(value)

    rows = []
    for i, check in enumerate(checks):
        found = [g for g in check["guardrails"] if g["metric"] == metric]
        if not found or found[0]["estimate"] is None or found[0]["worst_bound"] is None:
            continue
        estimate, bound = found[0]["estimate"], found[0]["worst_bound"]
        label = f"check {i + 1} · {check['share'] * 100:g}%"
        rows.append(
            IntervalRow(
                label=label,
                estimate=estimate,
                low=min(estimate, bound),
                high=max(estimate, bound),
                colour=2 if found[0]["failed"] else 0,
                text=f"{label}: {text(estimate)}, worst bound {text(bound)}{' (failed)' if found[0]['failed'] else ''}",
            )
        )
    if not rows:
        return None
    reference = f"tolerated {'worse' if lower else 'lower'}: {text(limit)}"
    kind = "Relative" if relative else "Absolute"
    return interval_plot(
        chart_id=chart_id,
        title=f"{kind} effect on {metric} at each check, with the always-valid worst bound",
        description=f"Candidate against production; the dashed line marks no effect, {'right' if lower else 'left'} "
        f"of it is worse, and the worst bound must stay within the solid red line ({reference}). "
        + "; ".join(r.text for r in rows)
        + ".",
        rows=rows,
        reference=(limit, reference),
        x_label=f"{kind} difference from production",
        format_tick=formatting.percent_tick if relative else (lambda v, step: formatting.count_tick(v, step)),
    )


# How often a running rollout's page asks for its moving parts (static/live.js): checks run minutes apart,
# a person's advance or abort shows within seconds.
ROLLOUT_REFRESH_MS = 5000


@dataclass(frozen=True, slots=True)
class RolloutPage:
    rollout: RolloutOut
    checks: list[dict[str, Any]]
    charts: dict[str, Markup | None]  # per guardrail metric

    @property
    def active(self) -> bool:
        """Still moving (a paused rollout may be resumed): its page refreshes itself."""
        return self.rollout.status in ACTIVE_STATUSES

    @property
    def latest_check(self) -> datetime | None:
        """When the latest check ran (the evidence keeps it as ISO 8601 text)."""
        evidence = self.rollout.evidence
        return datetime.fromisoformat(evidence["checked_at"]) if evidence else None


class ConsoleRollouts:
    def __init__(self, session: AsyncSession, limits: PromptLimits) -> None:
        self.service = RolloutService(session, limits)

    async def page(self, rollout_id: int) -> RolloutPage:
        rollout = RolloutOut.of(*await self.service.with_events(rollout_id))
        checks = checks_of(rollout)
        charts = {g["metric"]: guardrail_chart(g, checks, f"guardrail-{i}") for i, g in enumerate(rollout.guardrails)}
        return RolloutPage(rollout, checks, charts)
