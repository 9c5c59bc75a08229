"""Every ORM model, imported in one place so the metadata is complete (Alembic, tests)."""

from registry.alerts.models import AlertIncident, AlertRule
from registry.auth.models import ApiKey, AuditEntry
from registry.completions.models import ApiKeyBudget, CompletionRecord
from registry.configs.models import ModelConfig, ModelConfigTransition, ModelConfigVersion
from registry.console.models import ConsoleSession
from registry.db.base import Base
from registry.db.change_log import ChangeLogEntry
from registry.evals.models import EvalDataset, EvalDatasetItem, EvalDatasetVersion, EvalGate, EvalRun, EvalRunItem
from registry.experiments.models import (
    Experiment,
    ExperimentMetric,
    ExperimentMetricSums,
    ExperimentPhase,
    ExperimentUnit,
    ExperimentVariant,
    ExperimentVariantCount,
    Exposure,
    Metric,
    OutcomeEvent,
    UnitChange,
    UnitMetricValue,
)
from registry.outbox.models import OutboxEvent
from registry.prompts.models import Prompt, PromptTransition, PromptVersion
from registry.rollouts.models import Rollout, RolloutEvent
from registry.webhooks.models import Webhook, WebhookDelivery

__all__ = [
    "AlertIncident",
    "AlertRule",
    "ApiKey",
    "ApiKeyBudget",
    "AuditEntry",
    "Base",
    "ChangeLogEntry",
    "CompletionRecord",
    "ConsoleSession",
    "EvalDataset",
    "EvalDatasetItem",
    "EvalDatasetVersion",
    "EvalGate",
    "EvalRun",
    "EvalRunItem",
    "Experiment",
    "ExperimentMetric",
    "ExperimentMetricSums",
    "ExperimentPhase",
    "ExperimentUnit",
    "ExperimentVariant",
    "ExperimentVariantCount",
    "Exposure",
    "Metric",
    "ModelConfig",
    "ModelConfigTransition",
    "ModelConfigVersion",
    "OutboxEvent",
    "OutcomeEvent",
    "Prompt",
    "PromptTransition",
    "PromptVersion",
    "Rollout",
    "RolloutEvent",
    "UnitChange",
    "UnitMetricValue",
    "Webhook",
    "WebhookDelivery",
]
