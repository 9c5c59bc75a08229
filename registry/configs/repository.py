from __future__ import annotations

from sqlalchemy.orm import joinedload

from registry.configs.models import ModelConfig, ModelConfigTransition, ModelConfigVersion
from registry.lib.versioned import VersionedRepository

# A version with everything a caller reads of it: its config's name, and its fallback (one hop) with that name.
# Relative to ModelConfigVersion, so other domains chain them (``joinedload(X.config_version).options(*...)``).
CONFIG_VERSION_LOADS = (
    joinedload(ModelConfigVersion.config),
    joinedload(ModelConfigVersion.fallback).joinedload(ModelConfigVersion.config),
)


class ConfigRepository(VersionedRepository[ModelConfig, ModelConfigVersion, ModelConfigTransition]):
    resource_model = ModelConfig
    version_model = ModelConfigVersion
    transition_model = ModelConfigTransition
    parent_column = "config_id"
    version_options = CONFIG_VERSION_LOADS
