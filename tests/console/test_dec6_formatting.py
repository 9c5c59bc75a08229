"""How numbers read on console pages at their edges: large settings grouped, NaN and infinity as missing, no '-0'.

A rollout step's wait of a day read '8.64e+04' seconds and an alert's threshold of 10,000 read '1e+04'; a statistic of
too little data read 'nan'; an effect that rounds to zero read '-0.00%'; an effect chart's axis under a percent read
'-1%, -0%, -0%, 0%, +0%' (whole percents whatever the ticks' step).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.console import formatting

CASES = json.loads((Path(__file__).parent / "cases" / "dec6_formatting.json").read_text())


@pytest.mark.parametrize(("kind", "values", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_number_reads_as_a_person_writes_it(kind: str, values: list[float | str], expected: str) -> None:
    assert getattr(formatting, kind)(*(float(v) for v in values)) == expected
