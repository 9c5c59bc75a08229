"""Datasets as code: ``datasets/NAME.jsonl`` beside the prompt files, pushed by ``registry sync`` (a new
version only when the items differ) and written by ``registry export``; and a gate that refuses a
``sync --promote`` until a run meets it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Registry, stand_in_prompt
from tests.clients.conftest import Live


def items(*answers: str, expected: str = "y") -> list[dict[str, object]]:
    return [{"variables": {"answer": a}, "expected": expected} for a in answers]


def write_dataset(folder: Path, name: str, rows: list[dict[str, object]], **dumps: object) -> Path:
    file = folder / "datasets" / f"{name}.jsonl"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(row, **dumps) + "\n" for row in rows))  # type: ignore[arg-type]
    return file


def dataset_versions(live: Live, name: str) -> list[int]:
    return [v["version"] for v in live.ok(live.admin.get(f"/v1/evals/datasets/{name}/versions"))["items"]]


def test_sync_pushes_a_dataset_once_and_again_only_when_its_items_change(
    registry: Registry, live: Live, tmp_path: Path
) -> None:
    file = write_dataset(tmp_path, "support/cases", items("y", "n"))
    first = registry("sync", str(tmp_path))
    assert (first.code, first.out) == (0, "+ dataset support/cases: version 1 created (2 items)\n"), first.err
    again = registry("sync", str(tmp_path))
    assert again.out == "= dataset support/cases: unchanged (version 1)\n"
    write_dataset(
        tmp_path, "support/cases", items("y", "n"), separators=(" , ", " : "), sort_keys=True
    )  # same items, other layout
    assert registry("sync", "--dry-run", str(tmp_path)).out == "= dataset support/cases: unchanged (version 1)\n"
    assert registry("sync", str(tmp_path)).out == "= dataset support/cases: unchanged (version 1)\n"

    file.write_text(file.read_text() + json.dumps({"variables": {"answer": "maybe"}}) + "\n")
    planned = registry("sync", "--dry-run", str(tmp_path))
    assert planned.out == "~ dataset support/cases: new version 2 (newest is 1)\n"
    assert dataset_versions(live, "support%2Fcases") == [1], "a dry run writes nothing"
    changed = registry("sync", "--message", "a third case", str(tmp_path))
    assert changed.out == "~ dataset support/cases: version 2 created (3 items)\n"
    newest = live.ok(live.admin.get("/v1/evals/datasets/support%2Fcases/versions/latest"))
    assert (newest["version"], newest["item_count"], newest["commit_message"]) == (2, 3, "a third case")
    as_json = json.loads(registry("sync", "--json", str(tmp_path)).out)
    assert (as_json["dataset"], as_json["version"], as_json["created"]) == ("support/cases", 2, False)


def test_a_bad_dataset_file_fails_the_sync_before_anything_is_written(
    registry: Registry, live: Live, tmp_path: Path
) -> None:
    (tmp_path / "greet.yaml").write_text("template: Hello\n")
    bad = tmp_path / "datasets" / "cases.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"variables": {}}\n[1, 2]\n{"variabels": {}}\n')
    failed = registry("sync", str(tmp_path))
    assert (failed.code, failed.out) == (1, "")
    assert failed.err.splitlines() == [
        f"error: {bad}: line 2 is not a JSON object",
        f"error: {bad}: line 3 has variabels; an item has variables, expected, tags, metadata",
    ]
    assert live.ok(live.admin.get("/v1/prompts"))["items"] == []
    assert live.ok(live.admin.get("/v1/evals/datasets"))["items"] == []


def test_export_writes_each_datasets_latest_version_and_leaves_a_file_in_sync_byte_for_byte(
    registry: Registry, live: Live, tmp_path: Path
) -> None:
    live.ok(live.admin.post("/v1/evals/datasets", json={"name": "cases"}))
    live.ok(live.admin.post("/v1/evals/datasets", json={"name": "empty"}))
    live.ok(live.admin.post("/v1/evals/datasets/cases/versions", json={"items": items("y", "n")}))
    exported = registry("export", str(tmp_path))
    assert exported.code == 0, exported.err
    file = tmp_path / "datasets" / "cases.jsonl"
    assert f"dataset cases -> {file}\n" in exported.out
    assert "- dataset empty: no version, not exported\n" in exported.out
    assert [json.loads(line)["variables"]["answer"] for line in file.read_text().splitlines()] == ["y", "n"]
    assert registry("sync", str(tmp_path)).out == "= dataset cases: unchanged (version 1)\n", "export then sync: no-op"

    by_hand = write_dataset(tmp_path, "cases", items("y", "n"), separators=(", ", ": "), sort_keys=True)
    written = by_hand.read_bytes()
    assert f"= dataset cases: {file} unchanged\n" in registry("export", str(tmp_path)).out
    assert by_hand.read_bytes() == written, "the same items: the file stays as it was written"

    live.ok(live.admin.post("/v1/evals/datasets/cases/versions", json={"items": items("y")}))
    registry("export", str(tmp_path))
    assert [json.loads(line)["variables"]["answer"] for line in file.read_text().splitlines()] == ["y"]
    as_json = [json.loads(line) for line in registry("export", "--json", str(tmp_path)).out.splitlines()]
    assert {"dataset": "cases", "file": str(file), "outcome": "unchanged"} in as_json


GATED = """\
messages:
  - role: user
    content: "{{ answer }}"
config: {name: gated-config, version: 1}
"""


def test_a_gate_refuses_sync_promote_with_its_evidence_until_a_run_meets_it(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    stand_in_prompt(evals_live, "gated")  # the config on the stand-in, and version 1 with the file's content
    (tmp_path / "gated.yaml").write_text(GATED)
    write_dataset(tmp_path, "gated-cases", items("y", "y", "y"))
    assert registry("sync", str(tmp_path)).code == 0
    gate = registry("gates", "set", "gated", "production", "--dataset", "gated-cases", "--min-pass-rate", "0.9")
    assert gate.code == 0, gate.err

    refused = registry("sync", "--promote", "production", str(tmp_path))
    assert refused.code == 6, "a gate's refusal is a validation failure"
    assert "= gated: unchanged (version 1)\n" in refused.out
    lines = refused.err.splitlines()
    assert lines[0].startswith("error: gated: prompt 'gated' version 1 may not enter production: no completed")
    assert "  failed: no completed evaluation run of version 1 with config gated-config@1 on dataset gated-cases@1" in (
        lines
    )
    assert "  gate on production: dataset gated-cases@1, min pass rate 0.9" in lines
    assert "production" not in evals_live.ok(evals_live.admin.get("/v1/prompts/gated/versions/1"))["state"]

    ran = registry("eval", "run", "gated", "--version", "1", "--dataset", "gated-cases", "--min-pass-rate", "0.9")
    assert ran.code == 0, ran.err
    accepted = registry("sync", "--promote", "production", str(tmp_path))
    assert accepted.code == 0, accepted.err
    assert "  version 1 promoted to production\n" in accepted.out
    assert evals_live.ok(evals_live.admin.get("/v1/prompts/gated/versions/1"))["state"] == "production"
