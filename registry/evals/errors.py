"""Errors of the evaluations domain, each with its status."""

from __future__ import annotations

from registry.lib.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError


class DatasetNotFoundError(NotFoundError):
    type = "dataset_not_found"
    title = "Dataset not found"


class DatasetVersionNotFoundError(NotFoundError):
    type = "dataset_version_not_found"
    title = "Dataset version not found"


class DatasetExistsError(ConflictError):
    type = "dataset_exists"
    title = "Dataset exists"


class RunNotFoundError(NotFoundError):
    type = "eval_run_not_found"
    title = "Evaluation run not found"


class RunsNotComparableError(InvalidInputError):
    """Two runs can be compared item by item only on the same dataset version."""

    type = "runs_not_comparable"
    title = "Runs not comparable"


class GateNotFoundError(NotFoundError):
    type = "gate_not_found"
    title = "Gate not found"


class GateFailedError(InvalidInputError):
    """A promotion into a gated state lacks the evidence the gate asks for; the problem names it."""

    type = "gate_failed"
    title = "Gate failed"


class GateOverrideForbiddenError(ForbiddenError):
    type = "gate_override_forbidden"
    title = "Gate override forbidden"
