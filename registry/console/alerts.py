"""The console's alerts page: every rule with what it watches, and the incidents, newest first."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from registry.alerts.evaluation import UNITS
from registry.alerts.schemas import IncidentOut, RuleOut
from registry.alerts.service import AlertService
from registry.lib.pagination import PageRequest, decode_cursor, encode_cursor
from registry.lib.schema import paginate

MAX_RULES = 200


@dataclass(frozen=True)
class AlertsPage:
    rules: list[RuleOut]
    incidents: list[IncidentOut]
    next_cursor: str | None
    status: str  # the incidents shown: '' (all), firing, resolved
    units: dict[str, str]
    next_rules: str | None = None  # the cursor of the rules past this page's, if any
    later_rules: bool = False  # this page's rules start past the oldest


class ConsoleAlerts:
    def __init__(self, session: AsyncSession, backends: list[str]) -> None:
        self.alerts = AlertService(session, backends)

    async def page(self, page: PageRequest, *, status: str, rules_after: str | None = None) -> AlertsPage:
        """A page of incidents and one of rules, each with its own cursor: past the first two hundred rules,
        ``rules_after`` (``next_rules``) turns to the others."""
        shown = PageRequest(MAX_RULES, decode_cursor(rules_after, 1))
        rules, next_rules = paginate(await self.alerts.list_rules(shown), MAX_RULES, lambda r: encode_cursor(r.id))
        found = await self.alerts.incidents(page, status=status or None, rule_id=None)
        incidents, cursor = paginate(found, page.limit, lambda i: encode_cursor(i.id))
        return AlertsPage(
            [RuleOut.of(r) for r in rules],
            [IncidentOut.of(i) for i in incidents],
            cursor,
            status,
            dict(UNITS),
            next_rules,
            shown.after is not None,
        )
