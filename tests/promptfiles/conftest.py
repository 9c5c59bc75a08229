"""Prompt files are synced through the API, so their tests use the live registry of the client tests
(and, for datasets and gates, the one whose stand-in backend the items script)."""

from tests.cli.conftest import evals_live, registry, stand_in
from tests.clients.conftest import live, live_registry

__all__ = ["evals_live", "live", "live_registry", "registry", "stand_in"]
