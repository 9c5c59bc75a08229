"""Two syncs of one folder at once (two merges): the one that promotes second finds its version already
where it wanted it, which is success, not a conflict to retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prompt_registry_client import RegistryClient

from registry.promptfiles.documents import load_folder
from registry.promptfiles.sync import apply, plan
from tests.clients.conftest import Live, text


def test_a_promotion_another_sync_made_meanwhile_is_done_not_an_error(live: Live, tmp_path: Path) -> None:
    live.prompt("greet", text("Hello {{ name }}"), production=None)
    (tmp_path / "greet.yaml").write_text("kind: text\ntemplate: Hello {{ name }}\n")
    files, problems = load_folder(tmp_path)
    assert problems == []
    with RegistryClient(live.url, live.key) as client:
        (change,) = plan(client, files)
        assert not isinstance(change, tuple)
        promote = client.promote

        def racing(name: str, version: int, to: str, **options: Any) -> dict[str, Any]:
            """The other sync promotes between this one reading production (empty) and promoting."""
            live.promote("greet", 1)
            return promote(name, version, to, expected_current=None, **options)  # type: ignore[arg-type]

        client.promote = racing  # type: ignore[method-assign]
        done = apply(client, change, message="sync", promote_to="production")
    assert done == ["version 1 already in production"]
    versions = live.ok(live.admin.get("/v1/prompts/greet/versions"))["items"]
    assert [(v["version"], v["state"]) for v in versions] == [(1, "production")]
