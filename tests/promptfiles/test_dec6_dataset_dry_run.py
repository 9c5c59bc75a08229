"""``registry sync --dry-run`` refuses the dataset lines the service's upload refuses, as the real sync would."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from registry.evals.schemas import DatasetItemIn
from registry.promptfiles.datasets import load_datasets


def test_items_of_a_wrong_type_are_problems_before_anything_is_sent(tmp_path: Path) -> None:
    bad = [
        b'{"variables": null}',
        b'{"variables": {"q": "a"}, "expected": 5}',
        b'{"variables": {"q": "a"}, "tags": "smoke"}',
        b'{"variables": {"q": "a"}, "metadata": []}',
    ]
    good = b'{"variables": {"q": "a"}, "expected": null, "tags": ["smoke"]}'
    for line in bad:  # the service's own item schema
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(line, type=DatasetItemIn)
    msgspec.json.decode(good, type=DatasetItemIn)
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "cases.jsonl").write_bytes(b"\n".join([good, *bad]) + b"\n")
    found, problems = load_datasets(tmp_path)
    assert found == []
    assert [p.split(": ", 1)[1] for p in problems] == [
        "line 2: variables must be an object",
        "line 3: expected must be text or null",
        "line 4: tags must be a list of text",
        "line 5: metadata must be an object",
    ]


def test_a_dataset_name_longer_than_the_service_takes_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / f"{'x' * 129}.jsonl").write_text('{"variables": {}}\n')
    (tmp_path / "datasets" / f"{'y' * 128}.jsonl").write_text('{"variables": {}}\n')
    found, problems = load_datasets(tmp_path)
    assert [name for name, _ in found] == ["y" * 128]
    assert len(problems) == 1
    assert f"'{'x' * 129}' is not a dataset name" in problems[0]
