"""``GET /v1/admin/doctor``: the readiness report, for the admin scope."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.lib.schema import Output
from registry.operations import doctor
from registry.operations.doctor_service import DoctorService
from registry.runtime import Runtime


class DoctorCheckOut(Output):
    name: str
    status: str
    reason: str


class DoctorReportOut(Output):
    status: str  # pass, warn or fail: the worst of the checks
    checks: list[DoctorCheckOut]


def report_of(checks: list[doctor.Check]) -> DoctorReportOut:
    return DoctorReportOut(
        status=doctor.overall(checks),
        checks=[DoctorCheckOut(name=c.name, status=c.status, reason=c.reason) for c in checks],
    )


class AdminController(Controller):
    path = "/admin"
    tags = ["operations"]

    @get(
        "/doctor",
        opt={"scope": Scope.ADMIN},
        operation_id="doctor",
        summary="Readiness report: this deployment against the production checklist",
        description="Each check passes, warns or fails with its reason; `status` is the worst of them.",
    )
    async def doctor(
        self, db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
    ) -> DoctorReportOut:
        return report_of(await DoctorService(db_session, runtime.settings, runtime.redis).run())
