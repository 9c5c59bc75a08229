"""Hidden files in a prompt folder (a repository's ``.github``, macOS's ``._`` twins of copied files) are not
prompt files: no prompt name starts with '.', so reading them could only refuse the whole sync."""

from __future__ import annotations

from pathlib import Path

from registry.promptfiles.datasets import load_datasets
from registry.promptfiles.documents import load_folder

APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02"  # the header of a ._ file


def test_hidden_files_and_folders_are_left_out_and_the_rest_loads(tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    (folder / "support").mkdir(parents=True)
    (folder / ".github" / "workflows").mkdir(parents=True)
    (folder / "greet.yaml").write_text("template: 'Hello {{ name }}'\n")
    (folder / "support" / "summarize.yml").write_text("template: 'Sum up {{ text }}'\n")
    (folder / "._greet.yaml").write_bytes(APPLE_DOUBLE)
    (folder / "support" / "._summarize.yml").write_bytes(APPLE_DOUBLE)
    (folder / ".github" / "workflows" / "ci.yml").write_text("on: push\njobs: {}\n")
    found, problems = load_folder(folder)
    assert problems == []
    assert [(path.relative_to(folder).as_posix(), document.name) for path, document in found] == [
        ("greet.yaml", "greet"),
        ("support/summarize.yml", "support/summarize"),
    ]


def test_a_folder_that_is_itself_hidden_is_read(tmp_path: Path) -> None:
    folder = tmp_path / ".prompts"
    folder.mkdir()
    (folder / "greet.yaml").write_text("template: Hello\n")
    found, problems = load_folder(folder)
    assert (problems, [document.name for _, document in found]) == ([], ["greet"])


def test_hidden_dataset_files_are_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    (folder / "datasets" / ".cache").mkdir(parents=True)
    (folder / "datasets" / "cases.jsonl").write_text('{"variables": {"name": "Ada"}}\n')
    (folder / "datasets" / "._cases.jsonl").write_bytes(APPLE_DOUBLE)
    (folder / "datasets" / ".cache" / "old.jsonl").write_text("not json\n")
    datasets, problems = load_datasets(folder)
    assert (problems, [name for name, _ in datasets]) == ([], ["cases"])
