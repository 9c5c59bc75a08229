"""Exporting over a hand-written prompt file changes only the values that differ (issue 19 item 6).

Comments, flow lists, quoting, indentation and long lines stay as the author wrote them.
"""

from __future__ import annotations

import difflib
from dataclasses import replace

import pytest

from registry.promptfiles.documents import ConfigRef, Layout, PromptDocument, parse_document

LONG = "Summarize the ticket in at most {{ max_words }} words, " + "keeping every promise the agent made " * 4
HAND_WRITTEN = f"""\
# The support team's summarizer; owned by #support-tools.
description: Summarize a support ticket.   # shown in the console
tags: [support, beta]
kind: chat                       # text with `template`, chat with `messages`
messages:
  - role: system
    content: |
      {LONG.strip()}
      Never invent an order number.
  - role: user
    content: "{{{{ ticket }}}}"
input_schema:
  properties:
    ticket: {{type: string, description: 'The ticket as the customer wrote it, every reply quoted below it, untouched'}}
    max_words: {{type: integer, minimum: 5}}
  required: [ticket, max_words]
config: {{name: small, label: production}}   # follows the config's production
"""


def hand_written() -> PromptDocument:
    return parse_document(HAND_WRITTEN, name="support/summarize", source="summarize.yaml")


def changed_lines(before: str, after: str) -> list[str]:
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


def test_a_file_that_already_says_it_comes_back_as_the_same_text() -> None:
    document = hand_written()
    assert document.rewrite(HAND_WRITTEN) is HAND_WRITTEN
    pinned_elsewhere = replace(document, tags=("beta", "support"), description="Summarize a support ticket.")
    assert pinned_elsewhere.rewrite(HAND_WRITTEN) == HAND_WRITTEN


def test_a_changed_value_changes_only_its_line_keeping_comments_flow_lists_quotes_and_long_lines() -> None:
    document = hand_written()
    messages = document.messages
    assert messages is not None
    schema = dict(document.input_schema or {})
    schema["required"] = ["ticket"]
    changed = replace(
        document,
        description="Summarize a support ticket for the next agent.",
        messages=(messages[0], ("user", "Ticket: {{ ticket }}")),
        input_schema=schema,
    )
    after = changed.rewrite(HAND_WRITTEN)
    assert changed_lines(HAND_WRITTEN, after) == [
        "-description: Summarize a support ticket.   # shown in the console",
        "+description: Summarize a support ticket for the next agent. # shown in the console",
        '-    content: "{{ ticket }}"',
        '+    content: "Ticket: {{ ticket }}"',
        "-  required: [ticket, max_words]",
        "+  required: [ticket]",
    ]
    assert parse_document(after, name="support/summarize", source="x.yaml") == changed


def test_a_changed_template_keeps_its_block_and_the_long_line_unwrapped() -> None:
    document = hand_written()
    messages = document.messages
    assert messages is not None
    system = messages[0][1].replace("Never invent an order number.", "Never invent an order or ticket number.")
    after = replace(document, messages=((messages[0][0], system), messages[1])).rewrite(HAND_WRITTEN)
    assert changed_lines(HAND_WRITTEN, after) == [
        "-      Never invent an order number.",
        "+      Never invent an order or ticket number.",
    ]


def test_a_config_label_stays_a_label_unless_the_export_pins_another_config() -> None:
    document = hand_written()
    assert document.rewrite(HAND_WRITTEN) == HAND_WRITTEN, "the label reference is kept as written"
    pinned = replace(document, config=ConfigRef("small", version=2))
    assert changed_lines(HAND_WRITTEN, pinned.rewrite(HAND_WRITTEN)) == [
        "-config: {name: small, label: production}   # follows the config's production",
        "+config: {name: small, version: 2}          # follows the config's production",
    ]
    short = "template: Hi\nconfig: small  # production of small\n"
    as_written = parse_document(short, name="p", source="p.yaml")
    assert as_written.config == ConfigRef("small", label="production")
    assert as_written.rewrite(short) is short


def test_new_tags_join_the_flow_list_in_place() -> None:
    after = replace(hand_written(), tags=("beta", "support", "vip")).rewrite(HAND_WRITTEN)
    assert changed_lines(HAND_WRITTEN, after) == ["-tags: [support, beta]", "+tags: [support, beta, vip]"]


def test_block_lists_and_pyyaml_style_indentation_are_kept() -> None:
    text = "tags:\n- a\n- b\nkind: text\ntemplate: Hello\n"
    after = replace(parse_document(text, name="p", source="p.yaml"), template="Hello there").rewrite(text)
    assert after == "tags:\n- a\n- b\nkind: text\ntemplate: Hello there\n"


def test_a_prompt_that_changes_kind_changes_its_content_field_in_place() -> None:
    text = "# greeting\ndescription: Greets.\ntemplate: Hello {{ name }}  # short\ntags: [a]\n"
    chat = PromptDocument(name="p", kind="chat", messages=(("user", "Hello {{ name }}\nand welcome"),))
    after = replace(chat, description="Greets.", tags=("a",)).rewrite(text)
    assert after.startswith("# greeting\ndescription: Greets.\nmessages:\n")
    assert after.endswith("tags: [a]\n")
    assert parse_document(after, name="p", source="p.yaml") == replace(chat, description="Greets.", tags=("a",))


@pytest.mark.parametrize(
    ("text", "layout"),
    [
        (HAND_WRITTEN, Layout(mapping=2, sequence=4, offset=2)),
        ("tags:\n- a\nschema:\n    properties:\n        x: {}\n", Layout(mapping=4, sequence=2, offset=0)),
        ("template: |\n  Answer:\n      - not a list\n", Layout()),
    ],
    ids=["dash indented", "pyyaml style, four-space maps", "block scalar text is not layout"],
)
def test_the_layout_is_read_from_the_file(text: str, layout: Layout) -> None:
    assert Layout.of(text) == layout


def test_yes_and_on_are_text_as_in_yaml_1_2() -> None:
    document = parse_document("template: Hi\ntags: [yes, on]\n", name="p", source="p.yaml")
    assert document.tags == ("on", "yes")
