"""Export what a label holds, keep hand-written files, promote only what the folder holds (issue 19 item 6)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prompt_registry_client import RegistryClient

from registry.promptfiles.sync import run_export, run_sync
from tests.api import path
from tests.clients.conftest import Live, text
from tests.promptfiles.test_rewrite import HAND_WRITTEN


@pytest.fixture
def client(live: Live) -> Iterator[RegistryClient]:
    with RegistryClient(live.url, live.key) as client:
        yield client


def sync(client: RegistryClient, folder: Path, promote_to: str | None = None) -> tuple[bool, list[str], list[str]]:
    out: list[str] = []
    err: list[str] = []
    ok = run_sync(
        client, folder, dry_run=False, promote_to=promote_to, message="sync", echo=out.append, echo_error=err.append
    )
    return bool(ok), out, err


def export(client: RegistryClient, folder: Path, label: str = "production") -> list[str]:
    out: list[str] = []
    run_export(client, folder, prefix=None, echo=out.append, label=label)
    return out


def versions(live: Live, name: str) -> dict[int, str]:
    items: list[dict[str, Any]] = live.ok(live.admin.get(f"/v1/prompts/{path(name)}/versions"))["items"]
    return {item["version"]: item["state"] for item in items}


def small_config(live: Live) -> None:
    live.ok(live.admin.post("/v1/configs", json={"name": "small"}))
    live.ok(live.admin.post("/v1/configs/small/versions", json={"backend": "local", "model": "tiny"}))
    body = {"to": "production", "expected_current": None}
    live.ok(live.admin.post("/v1/configs/small/versions/1/promote", json=body))


def test_export_writes_what_production_holds_and_names_a_prompt_with_nothing_at_the_label(
    live: Live, client: RegistryClient, tmp_path: Path
) -> None:
    live.prompt("greet", text("Hello {{ name }}"), text("Hi {{ name }}, a draft"), production=1)
    live.prompt("drafting", text("Not yet"), production=None)

    out = export(client, tmp_path)
    assert (tmp_path / "greet.yaml").read_text() == "kind: text\ntemplate: Hello {{ name }}\n", "not the newer draft"
    assert not (tmp_path / "drafting.yaml").exists()
    assert "- drafting: no version in production, not exported" in out
    assert out[-1] == (
        f"exported 1 prompt(s) from production to {tmp_path}: 1 file(s) written, 0 unchanged, "
        "1 prompt(s) with no version in production"
    )

    live.promote("greet", 2, "staging")
    out = export(client, tmp_path / "staging", label="staging")
    assert (tmp_path / "staging" / "greet.yaml").read_text() == "kind: text\ntemplate: Hi {{ name }}, a draft\n"
    assert "- drafting: no version in staging, not exported" in out


def test_exporting_a_folder_in_sync_leaves_its_files_byte_for_byte_and_a_change_touches_only_its_value(
    live: Live, client: RegistryClient, tmp_path: Path
) -> None:
    small_config(live)
    summarize = tmp_path / "support" / "summarize.yaml"
    summarize.parent.mkdir()
    summarize.write_text(HAND_WRITTEN)
    (tmp_path / "greet.yml").write_text("# hello\ntemplate: 'Hello {{ name }}'   # quoted on purpose\n")
    assert sync(client, tmp_path, promote_to="production")[0]

    out = export(client, tmp_path)
    assert summarize.read_text() == HAND_WRITTEN
    assert (tmp_path / "greet.yml").read_text() == "# hello\ntemplate: 'Hello {{ name }}'   # quoted on purpose\n"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.y*ml")) == [
        "greet.yml",
        "support/summarize.yaml",
    ], "a prompt is exported to the file that holds it"
    assert f"= support/summarize: {summarize} unchanged" in out

    live.ok(live.admin.patch("/v1/prompts/support%2Fsummarize", json={"tags": ["beta", "support", "vip"]}))
    export(client, tmp_path)
    assert summarize.read_text() == HAND_WRITTEN.replace("tags: [support, beta]", "tags: [support, beta, vip]")


def test_a_config_label_in_a_file_is_pinned_only_when_the_label_moved_away(
    live: Live, client: RegistryClient, tmp_path: Path
) -> None:
    small_config(live)
    file = tmp_path / "greet.yaml"
    file.write_text("template: Hello\nconfig: {name: small, label: production}\n")
    assert sync(client, tmp_path, promote_to="production")[0]
    live.ok(live.admin.post("/v1/configs/small/versions", json={"backend": "local", "model": "tiny-2"}))
    export(client, tmp_path)
    assert file.read_text() == "template: Hello\nconfig: {name: small, label: production}\n"

    body = {"to": "production", "expected_current": 1}
    live.ok(live.admin.post("/v1/configs/small/versions/2/promote", json=body))
    export(client, tmp_path)
    assert file.read_text() == "template: Hello\nconfig: {name: small, version: 1}\n", (
        "production of the prompt still pins version 1, which the label no longer names"
    )


def test_sync_promotes_the_version_a_file_holds_not_a_draft_made_outside_the_folder(
    live: Live, client: RegistryClient, tmp_path: Path
) -> None:
    (tmp_path / "greet.yaml").write_text("template: Hello {{ name }}\n")
    (tmp_path / "bye.yaml").write_text("template: Bye\n")
    assert sync(client, tmp_path)[0]
    live.ok(live.admin.post("/v1/prompts/greet/versions", json=text("Made in the console {{ name }}")))
    (tmp_path / "bye.yaml").write_text("template: Bye for now\n")

    ok, out, err = sync(client, tmp_path, promote_to="staging")
    assert ok, err
    assert versions(live, "greet") == {2: "draft", 1: "staging"}, "no copy of version 1, the outside draft left"
    assert versions(live, "bye") == {2: "staging", 1: "draft"}
    assert out == [
        "~ bye: new version 2 (newest is 1)",
        "  version 2 created",
        "  version 2 promoted to staging",
        "= greet: unchanged (version 1, newest is 2)",
        "  version 1 promoted to staging",
    ]

    live.promote("greet", 1, "production")
    ok, out, _ = sync(client, tmp_path, promote_to="staging")
    assert ok
    assert "  version 1 is in production, not moved back to staging" in out
    assert versions(live, "greet") == {2: "draft", 1: "production"}


def test_syncing_a_folder_without_prompt_files_says_so_and_fails(client: RegistryClient, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("prompts go here")
    ok, out, err = sync(client, tmp_path)
    assert not ok
    assert out == []
    assert err == [f"error: {tmp_path}: no prompt files (*.yaml, *.yml) in it, so nothing to sync"]
