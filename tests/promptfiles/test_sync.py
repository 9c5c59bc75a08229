"""`registry sync` and `registry export` against a live registry, as CI and product people run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from registry.cli import main
from tests.api import path
from tests.clients.conftest import Live, text

SUMMARIZE = """\
description: Summarize a support ticket.
tags: [support]
messages:
  - role: system
    content: |
      Summarize the ticket in at most {{ max_words }} words.
  - role: user
    content: "{{ ticket }}"
input_schema:
  properties:
    ticket: {type: string, maxLength: 20000}
    max_words: {type: integer, minimum: 5}
  required: [ticket, max_words]
config: {name: small, label: production}
"""


def registry_cli(live: Live, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"REGISTRY_URL": live.url, "REGISTRY_API_KEY": live.key})
    return result.exit_code, result.stdout, result.stderr


def newest(live: Live, name: str) -> dict[str, Any]:
    return live.ok(live.admin.get(f"/v1/prompts/{path(name)}", params={"label": "latest"}))


def small_config(live: Live) -> None:
    live.ok(live.admin.post("/v1/configs", json={"name": "small"}))
    live.ok(live.admin.post("/v1/configs/small/versions", json={"backend": "local", "model": "tiny"}))
    live.ok(
        live.admin.post("/v1/configs/small/versions/1/promote", json={"to": "production", "expected_current": None})
    )


def write(folder: Path, name: str, content: str) -> Path:
    file = folder / f"{name}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(content)
    return file


def test_sync_creates_prompts_then_changes_only_what_changed(live: Live, tmp_path: Path) -> None:
    small_config(live)
    greet = write(tmp_path, "greet", "template: Hello {{ name }}!\n")
    write(tmp_path, "support/summarize", SUMMARIZE)

    code, out, _ = registry_cli(live, "sync", str(tmp_path))
    assert code == 0
    assert out.splitlines() == [
        "+ greet: new prompt, version 1",
        "  version 1 created",
        "+ support/summarize: new prompt, version 1",
        "  version 1 created",
    ]
    summarize = newest(live, "support/summarize")
    assert (summarize["description"], summarize["tags"]) == ("Summarize a support ticket.", ["support"])
    assert summarize["version"]["config"]["version"] == 1, "the label was pinned to the version it names"

    code, out, _ = registry_cli(live, "sync", str(tmp_path))
    assert code == 0
    assert out.splitlines() == ["= greet: unchanged (version 1)", "= support/summarize: unchanged (version 1)"]
    code, out, _ = registry_cli(live, "sync", "--json", str(tmp_path))
    planned_greet, planned_summarize = (json.loads(line) for line in out.splitlines())
    assert planned_summarize["new_version"] is False
    assert planned_greet == {
        "prompt": "greet",
        "file": str(tmp_path / "greet.yaml"),
        "exists": True,
        "newest_version": 1,
        "version": 1,
        "new_version": False,
        "new_metadata": False,
        "done": [],
    }

    greet.write_text("template: Hi there, {{ name }}!\ntags: [greeting]\n")
    code, out, _ = registry_cli(live, "sync", "--dry-run", str(tmp_path))
    assert code == 0
    assert out.splitlines() == [
        "~ greet: new version 2 (newest is 1), description and tags",
        "--- registry: greet@1",
        f"+++ {greet}",
        "@@ -1,2 +1,3 @@",
        "+tags: [greeting]",
        " kind: text",
        "-template: Hello {{ name }}!",
        "+template: Hi there, {{ name }}!",
        "= support/summarize: unchanged (version 1)",
    ]
    assert newest(live, "greet")["version"]["version"] == 1, "a dry run changes nothing"

    code, out, _ = registry_cli(live, "sync", "--promote", "staging", "--message", "friendlier", str(tmp_path))
    assert code == 0
    assert "  version 2 created" in out.splitlines()
    assert "  version 2 promoted to staging" in out.splitlines()
    assert "  version 1 promoted to staging" in out.splitlines(), "an unchanged prompt is promoted too"
    greeted = newest(live, "greet")
    assert (greeted["version"]["commit_message"], greeted["labels"]["staging"], greeted["tags"]) == (
        "friendlier",
        2,
        ["greeting"],
    )

    code, out, _ = registry_cli(live, "sync", "--promote", "staging", str(tmp_path))
    assert code == 0
    assert "promoted" not in out, "already there: nothing to do"


def test_export_then_sync_changes_nothing(live: Live, tmp_path: Path) -> None:
    small_config(live)
    tricky = "Dear {{ name }},   \n\n  thanks for writing: {{ '{{' }} not a variable }}\n\tcafé 🚀\n"
    live.prompt("letters/thanks", text(tricky), description="Thank-you letter", tags=["mail", "b2c"])
    live.prompt(
        "support/triage",
        {
            "kind": "chat",
            "messages": [{"role": "system", "content": "Triage.\n"}, {"role": "user", "content": "{{ ticket }}"}],
            "input_schema": {"properties": {"ticket": {"type": "string", "maxLength": 100}}, "required": ["ticket"]},
            "config": {"name": "small", "version": 1},
        },
    )
    live.prompt("drafts", text("v1"), text("v2 {{ x }}"), production=1)  # production's version 1 is exported
    live.ok(live.admin.post("/v1/prompts", json={"name": "empty"}))

    code, out, _ = registry_cli(live, "export", str(tmp_path / "first"))
    assert code == 0
    assert "- empty: no version in production, not exported" in out
    assert sorted(p.relative_to(tmp_path / "first").as_posix() for p in (tmp_path / "first").rglob("*.yaml")) == [
        "drafts.yaml",
        "letters/thanks.yaml",
        "support/triage.yaml",
    ]

    code, out, _ = registry_cli(live, "sync", "--dry-run", str(tmp_path / "first"))
    assert code == 0
    assert out.splitlines() == [
        "= drafts: unchanged (version 1, newest is 2)",
        "= letters/thanks: unchanged (version 1)",
        "= support/triage: unchanged (version 1)",
    ]
    code, _, _ = registry_cli(live, "sync", str(tmp_path / "first"))
    assert code == 0
    assert [newest(live, n)["version"]["version"] for n in ("drafts", "letters/thanks", "support/triage")] == [2, 1, 1]

    registry_cli(live, "export", str(tmp_path / "second"))
    for first in (tmp_path / "first").rglob("*.yaml"):
        assert (tmp_path / "second" / first.relative_to(tmp_path / "first")).read_text() == first.read_text()


def test_a_bad_file_fails_the_sync_before_anything_is_written(live: Live, tmp_path: Path) -> None:
    write(tmp_path, "good", "template: Hello\n")
    write(tmp_path, "bad", "template: Hello {{ name\n")
    write(tmp_path, "worse", "kind: text\ntemplte: Hello\n")
    code, out, err = registry_cli(live, "sync", str(tmp_path))
    assert code == 1
    assert out == ""
    assert err.count("error: ") == 3, err
    assert live.ok(live.admin.get("/v1/prompts"))["items"] == []


def test_a_refused_prompt_fails_the_sync_and_the_others_still_go_through(live: Live, tmp_path: Path) -> None:
    write(tmp_path, "a-first", "template: Hello\nconfig: {name: missing, version: 1}\n")
    write(tmp_path, "b-second", "template: Hello\nconfig: {name: missing, label: production}\n")
    write(tmp_path, "c-third", "template: Hello\n")
    code, out, err = registry_cli(live, "sync", str(tmp_path))
    assert code == 1
    assert err.splitlines() == [
        "error: a-first: no config is named 'missing'",
        "  config: no config is named 'missing'",
        "error: b-second: no config is named 'missing'",
    ]
    assert "+ c-third: new prompt, version 1" in out
    assert newest(live, "c-third")["version"]["version"] == 1


def test_export_label_picks_the_version_and_a_prompt_without_one_is_skipped(live: Live, tmp_path: Path) -> None:
    live.prompt("drafts", text("v1"), text("v2 {{ x }}"), production=1)
    code, _, _ = registry_cli(live, "export", "--label", "latest", str(tmp_path / "latest"))
    assert code == 0
    assert (tmp_path / "latest" / "drafts.yaml").read_text() == "kind: text\ntemplate: v2 {{ x }}\n"
    code, out, _ = registry_cli(live, "export", "--label", "staging", str(tmp_path / "staging"))
    assert code == 0, "a prompt still in development is no error"
    assert "- drafts: no version in staging, not exported" in out.splitlines()
    assert not (tmp_path / "staging" / "drafts.yaml").exists()


def test_syncing_an_empty_folder_fails_saying_so(live: Live, tmp_path: Path) -> None:
    code, out, err = registry_cli(live, "sync", str(tmp_path))
    assert (code, out) == (1, "")
    assert "no prompt files (*.yaml, *.yml) in it" in err
