from __future__ import annotations

from sqlalchemy.orm import joinedload

from registry.configs.models import ModelConfig, ModelConfigTransition, ModelConfigVersion
from registry.lib.versioned import VersionedRepository


class ConfigRepository(VersionedRepository[ModelConfig, ModelConfigVersion, ModelConfigTransition]):
    resource_model = ModelConfig
    version_model = ModelConfigVersion
    transition_model = ModelConfigTransition
    parent_column = "config_id"
    version_options = (
        joinedload(ModelConfigVersion.config),
        joinedload(ModelConfigVersion.fallback).joinedload(ModelConfigVersion.config),
    )
