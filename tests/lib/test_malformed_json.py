"""Why a body is not JSON, from the case file tests/cases/malformed_json.json (bodies as latin-1 text)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from registry.lib.errors import malformed_json_detail

CASES: list[list[str]] = json.loads((Path(__file__).parents[1] / "cases" / "malformed_json.json").read_text())


@pytest.mark.parametrize(("body", "reason"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_json_detail_names_what_is_wrong(body: str, reason: str) -> None:
    raw = body.encode("latin-1")
    with pytest.raises(msgspec.DecodeError) as refused:
        msgspec.json.decode(raw)
    assert malformed_json_detail(raw, refused.value) == f"the body is not valid JSON: {reason}"
