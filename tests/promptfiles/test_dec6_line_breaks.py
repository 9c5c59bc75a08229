"""A prompt whose text holds CR, CRLF, NEL, LS, PS or a control character exports to a file that reads back
as the same prompt, so a sync right after an export changes nothing (a block scalar turned CRLF into LF,
and NEL or LS into a line break that left the file unreadable)."""

from __future__ import annotations

from pathlib import Path

from registry.promptfiles.documents import PromptDocument, load_folder, parse_document

TEXTS = [
    "Hi {{ name }}\r\nBye\r\n",
    "a\rb\nc",
    "a\x85b\nc",
    "x\u2028y\nz",
    "p\u2029q",
    "bell\x07\nring",
    "plain\nlines\n",
]


def test_texts_with_other_line_breaks_round_trip_through_a_file(tmp_path: Path) -> None:
    documents = [PromptDocument(name=f"t{i}", kind="text", template=t, description=t) for i, t in enumerate(TEXTS)]
    documents.append(PromptDocument(name="chat", kind="chat", messages=tuple(("user", t) for t in TEXTS)))
    for document in documents:
        (tmp_path / f"{document.name}.yaml").write_text(document.to_yaml())
    found, problems = load_folder(tmp_path)
    assert problems == []
    assert sorted((d for _, d in found), key=lambda d: d.name) == sorted(documents, key=lambda d: d.name)
    for path, document in found:
        text = path.read_text()
        assert document.rewrite(text) is text, "an export over the file leaves it as it is"
    assert "|" in (tmp_path / "t6.yaml").read_text(), "plain multi-line text stays a block"
    # A hand-written file with a | block takes such a text escaped, and then reads back as it.
    rewritten = documents[0].rewrite("# kept\nkind: text\ntemplate: |\n  old\n  text\n")
    assert rewritten.startswith("# kept\n")
    assert parse_document(rewritten, name="t0", source="t0.yaml") == documents[0]
