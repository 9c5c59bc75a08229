"""Backends come from one JSON environment variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from registry.settings import Settings


def test_backends_are_read_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "REGISTRY_BACKENDS", '{"local": {"url": "http://127.0.0.1:8000", "max_concurrency": 4, "api_key": "s3"}}'
    )

    backend = Settings().backends["local"]

    assert backend.url == "http://127.0.0.1:8000"
    assert backend.max_concurrency == 4
    assert backend.api_key == "s3"
    assert backend.first_token_timeout == 30.0


def test_a_misspelt_backend_option_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_BACKENDS", '{"local": {"url": "http://x", "max_concurency": 4}}')

    with pytest.raises(ValidationError):
        Settings()
