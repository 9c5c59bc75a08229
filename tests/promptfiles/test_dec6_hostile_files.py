"""Prompt files from an untrusted change (a pull request): a few lines may not exhaust the machine
that checks them, and a link may not lead a sync to read a file outside the folder."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pytest

from registry.promptfiles.datasets import load_datasets
from registry.promptfiles.documents import MAX_FILE_BYTES, DocumentError, load_folder, parse_document


def _problems(text: str) -> list[str]:
    with pytest.raises(DocumentError) as refused:
        parse_document(text, name="bomb", source="bomb.yaml")
    return refused.value.problems


def test_alias_bombs_deep_nesting_and_huge_files_are_refused_as_problems() -> None:
    # Nine levels of ten aliases each: 10^9 values once expanded (digesting it never ends).
    levels = ['l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]']
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "template: hi\ninput_schema:\n  " + "\n  ".join(levels) + "\n"
    assert _problems(bomb) == ["holds more than 100000 values once its aliases (*name) are expanded"]
    # Deeper than the parser's recursion can go (the limit lowered: the parser slows with depth).
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 300)
    try:
        with pytest.raises(DocumentError) as too_deep:
            parse_document("template: hi\ninput_schema: " + "[" * 400 + "]" * 400 + "\n", name="d", source="d")
    finally:
        sys.setrecursionlimit(limit)
    assert isinstance(too_deep.value.__cause__, RecursionError)
    assert too_deep.value.problems == ["nested deeper than 64 levels"]
    assert _problems("template: hi\ninput_schema: " + "[" * 100 + "]" * 100 + "\n") == ["nested deeper than 64 levels"]
    assert _problems("template: " + "x" * MAX_FILE_BYTES + "\n")[0].startswith("larger than")
    # An alias a file uses on purpose (a shared schema) is fine.
    shared = "template: '{{ a }}'\ninput_schema:\n  properties: {a: &s {type: string}, b: *s}\n"
    assert parse_document(shared, name="ok", source="ok.yaml").input_schema == {
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}}
    }


def test_a_link_to_a_file_outside_the_folder_is_not_read(tmp_path: Path) -> None:
    folder, outside = tmp_path / "prompts", tmp_path / "secret"
    (folder / "support").mkdir(parents=True)
    outside.mkdir()
    (outside / "key.yaml").write_text("template: the deploy key is hunter2\n")
    (folder / "greet.yaml").write_text("template: Hello\n")
    os.symlink(outside / "key.yaml", folder / "leak.yaml")
    os.symlink(outside, folder / "support" / "elsewhere")
    (folder / "alias.yaml").symlink_to(folder / "greet.yaml")  # a link inside the folder is an ordinary file
    (folder / "datasets").mkdir()
    (outside / "keys.jsonl").write_text('{"variables": {"key": "hunter2"}}\n')
    os.symlink(outside / "keys.jsonl", folder / "datasets" / "leak.jsonl")
    datasets, problems = load_datasets(folder)
    assert datasets == []
    assert [p.split(": ", 1)[1] for p in problems] == [f"a link to a file outside {folder}, not read"]
    found, problems = load_folder(folder)
    assert sorted(document.name for _, document in found) == ["alias", "greet"]
    assert any("leak.yaml: a link to a file outside" in p for p in problems)
    assert not any("hunter2" in p for p in problems)
    assert not any(document.template and "hunter2" in document.template for _, document in found)


def test_a_file_that_is_not_utf8_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "latin.yaml").write_bytes(b"template: caf\xe9\n")
    (tmp_path / "ok.yaml").write_text("template: caf\u00e9\n", encoding="utf-8")
    found, problems = load_folder(tmp_path)
    assert [document.template for _, document in found] == ["caf\u00e9"]
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'latin.yaml'}: cannot be read as UTF-8 text")
