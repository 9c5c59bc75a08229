"""Prompt files are synced through the API, so their tests use the live registry of the client tests."""

from tests.clients.conftest import live, live_registry

__all__ = ["live", "live_registry"]
