"""The readiness report's checks, as pure functions of facts gathered elsewhere (``doctor_service``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Status = Literal["pass", "warn", "fail"]
UNUSED_ADMIN_DAYS = 90


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    reason: str


@dataclass(frozen=True)
class KeyFacts:
    public_id: str
    name: str
    admin: bool
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


def migrations(current: str | None, head: str | None) -> Check:
    if current == head:
        return Check("migrations", "pass", f"the database is at the head revision {head}")
    return Check(
        "migrations",
        "fail",
        f"the database is at {current or 'no revision'}, this release needs {head}: run 'registry migrate'",
    )


def backends(errors: Mapping[str, str | None]) -> Check:
    """``errors``: per configured backend, None when it answered, else why not."""
    if not errors:
        return Check("backends", "warn", "no completion backends configured (REGISTRY_BACKENDS)")
    down = {name: why for name, why in errors.items() if why is not None}
    if down:
        text = "; ".join(f"{name}: {why}" for name, why in sorted(down.items()))
        return Check("backends", "fail", f"{len(down)} of {len(errors)} backends unreachable ({text})")
    return Check("backends", "pass", f"all {len(errors)} backends answered ({', '.join(sorted(errors))})")


def redis(configured: bool, error: str | None) -> Check:
    if not configured:
        return Check("redis", "warn", "REGISTRY_REDIS_URL unset: caches, rate limits and invalidations are per process")
    if error is not None:
        return Check("redis", "fail", f"Redis is configured but unreachable ({error})")
    return Check("redis", "pass", "Redis answered")


def replicas(role: str, workers: int) -> Check:
    """What one process can see of redundancy: its own worker count and role (other replicas are not visible)."""
    if workers > 1:
        return Check("replicas", "pass", f"{workers} server worker processes")
    if role == "api":
        return Check(
            "replicas", "pass", "an API replica (REGISTRY_ROLE=api); background work runs in 'registry worker'"
        )
    return Check(
        "replicas",
        "warn",
        f"one process (REGISTRY_ROLE={role}, REGISTRY_WORKERS=1): run several API replicas (REGISTRY_ROLE=api) "
        "and a 'registry worker', or REGISTRY_WORKERS above 1",
    )


def keys(facts: Sequence[KeyFacts], now: datetime) -> list[Check]:
    """Admin keys unused for 90 days fail; keys that never expire warn."""
    cutoff = now - timedelta(days=UNUSED_ADMIN_DAYS)
    idle = [k for k in facts if k.admin and (k.last_used_at or k.created_at) < cutoff]
    endless = [k for k in facts if k.expires_at is None]
    checks = []
    if idle:
        names = ", ".join(f"{k.public_id} ({k.name})" for k in idle)
        checks.append(
            Check("admin_keys", "fail", f"admin keys unused for {UNUSED_ADMIN_DAYS} days: {names}; revoke them")
        )
    else:
        checks.append(Check("admin_keys", "pass", f"every admin key was used within {UNUSED_ADMIN_DAYS} days"))
    if endless:
        names = ", ".join(f"{k.public_id} ({k.name})" for k in endless)
        checks.append(Check("key_expiry", "warn", f"keys without an expiry: {names}"))
    else:
        checks.append(Check("key_expiry", "pass", "every active key expires"))
    return checks


def gates(ungated: Sequence[str]) -> Check:
    if ungated:
        return Check(
            "evaluation_gates", "warn", f"production prompts without a production evaluation gate: {', '.join(ungated)}"
        )
    return Check("evaluation_gates", "pass", "every prompt in production has a production evaluation gate")


def retention(days: float, prompts_storing: int, overdue_texts: int) -> Check:
    """Stored texts past their retention (plus a day's grace) mean the purge does not run: no worker."""
    if overdue_texts:
        return Check(
            "retention",
            "fail",
            f"{overdue_texts} stored completion texts are older than the retention of {days:g} days: "
            "is a process with REGISTRY_ROLE=worker or all running?",
        )
    return Check(
        "retention",
        "pass",
        f"stored texts are kept {days:g} days (REGISTRY_COMPLETION_IO_RETENTION_DAYS; {prompts_storing} prompts "
        "store them); usage records are kept",
    )


def backups(last: datetime | None, now: datetime, max_age_hours: float) -> Check:
    """The signal is the audit entry 'registry backup' writes into the database it backed up."""
    if last is None:
        return Check("backups", "fail", "no 'registry backup' was ever recorded in this database")
    age = now - last
    if age > timedelta(hours=max_age_hours):
        return Check(
            "backups",
            "fail",
            f"the last backup is {age.total_seconds() / 3600:.0f} hours old (REGISTRY_BACKUP_MAX_AGE_HOURS="
            f"{max_age_hours:g})",
        )
    return Check("backups", "pass", f"last backup at {last.isoformat(timespec='seconds')}")


def bootstrap(enabled: bool) -> Check:
    if enabled:
        return Check(
            "admin_key_bootstrap",
            "fail",
            "REGISTRY_BOOTSTRAP_ADMIN_KEY is on: an empty database gets an admin key printed to the log; set it false",
        )
    return Check("admin_key_bootstrap", "pass", "REGISTRY_BOOTSTRAP_ADMIN_KEY is off")


def overall(checks: Sequence[Check]) -> Status:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
