from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.lib.errors import BadRequestError
from registry.lib.http import path_keeping_encoded_slashes
from registry.lib.pagination import decode_cursor, encode_cursor

CASES = json.loads((Path(__file__).parents[1] / "cases" / "encoded_paths.json").read_text())


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_encoded_slashes_survive_routing(raw: str, expected: str) -> None:
    assert path_keeping_encoded_slashes(raw.encode()) == expected


@pytest.mark.parametrize("value", ["support/summarize", 42, "ünïcode"])
def test_cursor_round_trips(value: object) -> None:
    assert decode_cursor(encode_cursor(value), 1) == (value,)


@pytest.mark.parametrize("cursor", ["not-base64!", encode_cursor(1, 2), "eyJhIjoxfQ"])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(BadRequestError):
        decode_cursor(cursor, 1)
