"""Prompt files: what a valid one holds, how a bad one is refused, and that writing one reads back the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.lib.hashing import content_sha256
from registry.promptfiles.documents import (
    ConfigRef,
    DocumentError,
    PromptDocument,
    load_folder,
    name_of,
    parse_document,
)

INVALID = json.loads((Path(__file__).parent / "cases" / "invalid_documents.json").read_text())

TRICKY_TEXTS = [
    "plain",
    "two\nlines",
    "ends with a newline\n",
    "\nstarts with one",
    "trailing spaces   \nand tabs\t\n",
    "  indented first line\nthen not",
    "quotes ' and \" and: colons, # hashes, {{ braces }}",
    "unicode: café, 日本語, emoji 🚀",
    "---\n...\n- looks like YAML\n",
    "",
    "yes",
    "1.5",
    "null",
]


@pytest.mark.parametrize(("text", "problem"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_a_bad_file_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_document(text, name="greet", source="greet.yaml")
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_a_chat_file_reads_into_a_document() -> None:
    text = """
description: Summarize a ticket.
tags: [support, beta, support]
messages:
  - role: system
    content: |
      At most {{ max_words }} words.
  - role: user
    content: "{{ ticket }}"
input_schema:
  properties:
    ticket: {type: string}
    max_words: {type: integer, minimum: 5}
  required: [ticket, max_words]
config: {name: small, label: production}
"""
    document = parse_document(text, name="support/summarize", source="x.yaml")
    assert document.kind == "chat", "messages make a chat prompt"
    assert document.messages == (("system", "At most {{ max_words }} words.\n"), ("user", "{{ ticket }}"))
    assert document.tags == ("beta", "support"), "as the service stores them: sorted, once each"
    assert document.config == ConfigRef("small", label="production")


@pytest.mark.parametrize("value", TRICKY_TEXTS, ids=[repr(t)[:30] for t in TRICKY_TEXTS])
def test_writing_a_document_and_reading_it_back_gives_the_same_content(value: str) -> None:
    text = PromptDocument(name="p", kind="text", template=value, description=value.strip()[:20], tags=("a",))
    chat = PromptDocument(name="p", kind="chat", messages=(("system", value), ("user", "{{ q }}")))
    for document in (text, chat):
        assert parse_document(document.to_yaml(), name="p", source="p.yaml") == document


def test_multi_line_templates_are_written_as_blocks() -> None:
    document = PromptDocument(name="p", kind="text", template="Hello {{ name }},\nwelcome.\n")
    assert "template: |\n  Hello {{ name }},\n  welcome.\n" in document.to_yaml()


def test_the_digest_is_the_services() -> None:
    document = PromptDocument(
        name="p",
        kind="chat",
        messages=(("user", "{{ q }}"),),
        input_schema={"properties": {"q": {"type": "string"}}},
        config=ConfigRef("small", version=3),
    )
    service_content: dict[str, Any] = {
        "kind": "chat",
        "template": None,
        "messages": [{"role": "user", "content": "{{ q }}"}],
        "input_schema": {"properties": {"q": {"type": "string"}}},
        "config": {"name": "small", "version": 3},
    }
    assert document.sha256() == content_sha256(service_content)


def test_a_folder_names_prompts_by_their_paths_and_reports_every_bad_file(tmp_path: Path) -> None:
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "summarize.yaml").write_text("template: Hi\n")
    (tmp_path / "greet.yml").write_text("template: Hello\n")
    (tmp_path / "renamed.yaml").write_text("name: greet\ntemplate: Hello again\n")
    (tmp_path / "broken.yaml").write_text("kind: text\n")
    (tmp_path / "notes.txt").write_text("not a prompt")
    documents, problems = load_folder(tmp_path)
    assert sorted(d.name for _, d in documents) == ["greet", "greet", "support/summarize"]
    assert name_of(tmp_path / "support" / "summarize.yaml", tmp_path) == "support/summarize"
    assert len(problems) == 2
    assert "broken.yaml: template" in problems[0]
    assert "prompt 'greet' is also in" in problems[1]
