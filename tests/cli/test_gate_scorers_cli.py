"""``registry gates set`` names the scoring a gate's evidence must have, ``get`` shows it, and a promotion the gate
refuses for a run scored otherwise says how that run was scored and what the gate asks for."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Registry, stand_in_prompt
from tests.cli.test_eval_commands import ALWAYS_N, EXACT, cases
from tests.clients.conftest import Live

LENIENT = '{"kind": "not_contains", "value": "never-said"}'


def test_a_gate_set_with_scorers_shows_them_and_refuses_a_run_scored_otherwise(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    version = stand_in_prompt(evals_live, "scored", ALWAYS_N)
    registry("datasets", "push", "scored-cases", str(cases(tmp_path, "y", "y")))
    gate = registry(
        "gates", "set", "scored", "production", "--dataset", "scored-cases", "--min-pass-rate", "0.9", "--scorer", EXACT
    )
    assert gate.code == 0, gate.err
    assert gate.out.splitlines()[:2] == [
        "scored production: dataset scored-cases (its latest version), pass rate at least 90.0%",
        "scored with exact_match",
    ]
    shown = json.loads(registry("gates", "get", "scored", "production", "--json").out)
    assert [spec["kind"] for spec in shown["scorers"]] == ["exact_match"]
    ran = registry("eval", "run", "scored", "--version", str(version), "--dataset", "scored-cases", "--scorer", LENIENT)
    assert ran.code == 0, ran.err

    refused = registry("promote", "scored", str(version), "--to", "production")

    assert refused.code == 6
    assert 'was scored with not_contains(values=["never-said"]), the gate asks for exact_match' in refused.err
    assert "  gate on production: dataset scored-cases@1, min pass rate 0.9, scored with exact_match\n" in refused.err
    bad = registry("gates", "set", "scored", "production", "--dataset", "scored-cases", "--scorer", '{"kind": "x"}')
    assert bad.code == 6
    assert "scorers[0].kind" in bad.err
