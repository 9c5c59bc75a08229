"""The console's pure functions: side-by-side diffs, session tokens, sealed keys, CSRF tokens."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from registry.console import tokens
from registry.console.controller import local_target
from registry.console.diff import content_lines, side_by_side

CASES = json.loads((Path(__file__).parent / "cases" / "side_by_side.json").read_text())


@pytest.mark.parametrize(("before", "after", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_side_by_side(before: list[str], after: list[str], expected: list[list[list[Any]]]) -> None:
    hunks = side_by_side(before, after)
    assert [[[r.kind, r.left_number, r.left, r.right_number, r.right] for r in h.rows] for h in hunks] == expected


def test_chat_messages_are_lines_under_their_role() -> None:
    messages = [{"role": "system", "content": "Be brief.\nBe kind."}, {"role": "user", "content": "{{ q }}"}]
    assert content_lines(None, messages) == ["[system]", "Be brief.", "Be kind.", "[user]", "{{ q }}"]


def test_a_sealed_key_opens_only_with_its_token() -> None:
    key = "prk_abcdefghijkm_" + "s" * 43
    token, other = tokens.new_token(), tokens.new_token()
    sealed = tokens.seal(token, key)
    assert key.encode() not in sealed
    assert tokens.unseal(token, sealed) == key
    assert tokens.unseal(other, sealed) != key


def test_the_stored_row_id_is_not_the_token() -> None:
    token = tokens.new_token()
    assert tokens.token_digest(token) != token
    assert token not in tokens.token_digest(token)


def test_csrf_tokens_belong_to_one_session_and_one_purpose() -> None:
    token, other = tokens.new_token(), tokens.new_token()
    assert tokens.csrf_matches(token, tokens.csrf_token(token))
    assert not tokens.csrf_matches(other, tokens.csrf_token(token))
    assert not tokens.csrf_matches(token, tokens.csrf_token(token, login=True))
    assert not tokens.csrf_matches(token, None)


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("/console/prompts/a%2Fb", "/console/prompts/a%2Fb"),
        ("https://evil.example/", "/console/prompts"),
        ("//evil.example/console/", "/console/prompts"),
        ("/console/\\evil.example", "/console/prompts"),
        ("/console/login", "/console/prompts"),
        ("", "/console/prompts"),
    ],
    ids=["console page", "other site", "scheme-relative", "backslash", "sign-in itself", "none"],
)
def test_after_sign_in_only_console_pages_are_targets(candidate: str, expected: str) -> None:
    assert local_target(candidate) == expected


def test_the_vendored_axe_core_is_the_published_4_14_1() -> None:
    script = (Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js").read_bytes()
    assert script.startswith(b"/*! axe v4.14.1")
    assert hashlib.sha256(script).hexdigest() == "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
