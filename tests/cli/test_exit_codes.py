"""What ``registry`` says and exits with when something goes wrong, and what its help promises."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.cli.conftest import Registry
from tests.clients.conftest import Live
from tests.conftest import free_port

COMMAND_GROUPS = [
    "serve", "worker", "migrate", "keys", "prompts", "versions", "configs", "promote", "rollback", "history",
    "diff", "render", "complete", "metrics", "events", "usage", "audit", "webhooks", "experiments", "sync", "export",
    "eval", "datasets", "gates",
]  # fmt: skip


def test_help_lists_every_command_group_and_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1]
    for group in COMMAND_GROUPS:
        assert f"\n  {group} " in listed, group
    for line in ["3  not found (404)", "4  conflict (409)", "5  unauthorized", "6  validation", "7  unavailable"]:
        assert line in result.output


def test_the_url_and_key_options_name_their_environment_variables() -> None:
    result = CliRunner().invoke(main, ["prompts", "list", "--help"])
    assert "read from REGISTRY_URL" in result.output
    assert "read from REGISTRY_API_KEY" in result.output


def test_each_kind_of_failure_has_its_own_exit_code(registry: Registry, live: Live, tmp_path: Path) -> None:
    live.prompt("greet", {"kind": "text", "template": "Hello {{ name }}"})
    assert registry("prompts", "lsit").code == 2, "usage"
    missing = registry("prompts", "show", "nope")
    assert (missing.code, missing.err) == (3, "error: no prompt is named 'nope'\n")
    assert registry("prompts", "create", "greet").code == 4, "conflict: it exists"
    wrong_key = registry("prompts", "list", key="prk_aaaaaaaaaaaa_" + "x" * 43)
    assert wrong_key.code == 5
    assert "REGISTRY_API_KEY" in wrong_key.err
    invalid = tmp_path / "bad.txt"
    invalid.write_text("Hello {{ name")
    assert registry("versions", "create", "greet", "--file", str(invalid)).code == 6, "validation"
    down = registry("prompts", "list", url=f"http://127.0.0.1:{free_port()}")
    assert down.code == 7
    assert down.err.startswith("error: cannot reach the registry at http://127.0.0.1:")
    assert len(down.err.splitlines()) == 1


@pytest.mark.parametrize("key", ["", None])
def test_without_a_key_the_message_names_registry_api_key(key: str | None) -> None:
    env = {"REGISTRY_URL": "http://127.0.0.1:9", "REGISTRY_API_KEY": key}
    result = CliRunner().invoke(main, ["prompts", "list"], env=env)
    assert result.exit_code == 5
    assert result.stderr.startswith("error: no API key: set REGISTRY_API_KEY (or pass --api-key)")
