"""Errors of the experiments domain (experiments, metrics, events, unit data)."""

from __future__ import annotations

from registry.lib.errors import ConflictError, InvalidInputError, NotFoundError


class ExperimentNotFoundError(NotFoundError):
    """No experiment has this key."""

    type = "experiment_not_found"
    title = "Experiment not found"


class MetricNotFoundError(NotFoundError):
    """No metric has this key."""

    type = "metric_not_found"
    title = "Metric not found"


class PhaseNotFoundError(NotFoundError):
    """The experiment has no phase with this number."""

    type = "phase_not_found"
    title = "Phase not found"


class UnitNotFoundError(NotFoundError):
    """The service holds no exposure or event for this unit."""

    type = "unit_not_found"
    title = "Unit not found"


class ExperimentExistsError(ConflictError):
    """An experiment with this key already exists."""

    type = "experiment_exists"
    title = "Experiment already exists"


class MetricExistsError(ConflictError):
    """A metric with this key already exists."""

    type = "metric_exists"
    title = "Metric already exists"


class ExperimentStateError(ConflictError):
    """The experiment's status does not allow this (for example: starting one that already ran)."""

    type = "experiment_state"
    title = "Not allowed in the experiment's status"


class ExperimentConflictError(ConflictError):
    """Another running experiment holds the same prompt, or an overlapping range of the same namespace; or a version
    entering production would give a running experiment's variant callers it cannot serve."""

    type = "experiment_conflict"
    title = "Conflicts with a running experiment"


class ExperimentInvalidError(InvalidInputError):
    """The experiment's definition is invalid; ``errors`` lists each field."""

    type = "experiment_invalid"
    title = "Experiment invalid"


class MetricInvalidError(InvalidInputError):
    """The metric's definition is invalid; ``errors`` lists each field."""

    type = "metric_invalid"
    title = "Metric invalid"
