"""The console's alerts page: every rule with what it watches, and the incidents, newest first."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from registry.alerts.evaluation import UNITS
from registry.alerts.schemas import IncidentOut, RuleOut
from registry.alerts.service import AlertService
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate

MAX_RULES = 200


@dataclass(frozen=True)
class AlertsPage:
    rules: list[RuleOut]
    incidents: list[IncidentOut]
    next_cursor: str | None
    status: str  # the incidents shown: '' (all), firing, resolved
    units: dict[str, str]


class ConsoleAlerts:
    def __init__(self, session: AsyncSession, backends: list[str]) -> None:
        self.alerts = AlertService(session, backends)

    async def page(self, page: PageRequest, *, status: str) -> AlertsPage:
        rules = await self.alerts.list_rules(PageRequest(MAX_RULES, None))
        found = await self.alerts.incidents(page, status=status or None, rule_id=None)
        incidents, cursor = paginate(found, page.limit, lambda i: encode_cursor(i.id))
        return AlertsPage(
            [RuleOut.of(r) for r in rules], [IncidentOut.of(i) for i in incidents], cursor, status, dict(UNITS)
        )
