"""``registry eval``, ``datasets`` and ``gates`` against a live registry whose stand-in backend answers
each item its own ``answer`` variable, so pass rates are known before a run starts."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx

from registry.cli.eval_commands import Progress, follow, verdict
from tests.cli.conftest import Registry, stand_in_prompt
from tests.cli.test_startup import HTTPX_COMMAND_LINE, SERVER_MODULES, run_and_list_modules
from tests.clients.conftest import Live
from tests.evals.stand_in import StandIn
from tests.waiting import eventually

EXACT = '{"kind": "exact_match"}'
ALWAYS_Y = "{{ 'y' if answer else 'n' }}"  # answers y whatever the item says
ALWAYS_N = "{{ 'n' if answer else 'y' }}"


def cases(folder: Path, *answers: str, expected: str = "y", name: str = "cases.jsonl") -> Path:
    """A JSONL file of items answering ``answers`` and expecting ``expected``."""
    file = folder / name
    lines = [json.dumps({"variables": {"answer": a}, "expected": expected}) for a in answers]
    file.write_text("\n".join(lines) + "\n")
    return file


def test_a_dataset_is_pushed_once_listed_shown_and_pulled_back(registry: Registry, tmp_path: Path) -> None:
    file = cases(tmp_path, "y", "n")
    pushed = registry("datasets", "push", "support/cases", str(file), "--message", "first")
    assert (pushed.code, pushed.out) == (0, "support/cases v1 (2 items) created\n"), pushed.err
    again = registry("datasets", "push", "support/cases", str(file))
    assert again.out == "support/cases v1 (2 items) unchanged: the newest version holds these items\n"
    assert json.loads(registry("datasets", "push", "support/cases", str(file), "--json").out)["created"] is False
    assert re.search(r"^support/cases\s+1\s", registry("datasets", "list").out, re.M)
    shown = registry("datasets", "show", "support/cases")
    assert shown.out.startswith("support/cases: latest version 1\n")
    assert re.search(r"^1\s+2\s+[0-9a-f]{64}\s", shown.out, re.M), shown.out

    pulled = registry("datasets", "pull", "support/cases")
    assert [json.loads(line)["variables"] for line in pulled.out.splitlines()] == [{"answer": "y"}, {"answer": "n"}]
    out = tmp_path / "back.csv"
    assert registry("datasets", "pull", "support/cases", "--format", "csv", "-o", str(out)).code == 0
    assert out.read_text().splitlines()[0] == "json.answer,expected,tags,metadata"
    csv_push = registry("datasets", "push", "support/cases", str(out))
    assert csv_push.out.endswith("unchanged: the newest version holds these items\n"), "CSV read back as the same items"
    assert registry("datasets", "pull", "missing").code == 3


def test_a_run_shows_its_progress_and_summary_and_fails_below_the_minimum_pass_rate(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    version = stand_in_prompt(evals_live, "greet")
    registry("datasets", "push", "cases", str(cases(tmp_path, "y", "y", "y", "n")))
    ran = registry("eval", "run", "greet", "--version", str(version), "--dataset", "cases@1", "--scorer", EXACT)
    assert ran.code == 0, ran.err
    run_id = int(re.match(r"run (\d+): 4 items of cases@1\n", ran.err).group(1))  # type: ignore[union-attr]
    progress = [line for line in ran.err.splitlines()[1:] if line.startswith(f"run {run_id}: ")]
    assert progress, "a plain line per update when stderr is not a terminal"
    assert progress[-1] == f"run {run_id}: completed, 4/4 items, pass rate 75.0%, cost 0"
    done = [int(re.search(r"(\d)/4 items", line).group(1)) for line in progress]  # type: ignore[union-attr]
    assert done == sorted(done), "items done only grow"
    assert f"run {run_id}: completed, greet v{version} with greet-config v1 on cases@1\n" in ran.out
    assert "items: 4 of 4 done, 3 passed, 0 invalid, 0 errored\n" in ran.out
    assert re.search(r"^pass rate: 75\.0% \(95% CI \d+\.\d% to \d+\.\d%\)$", ran.out, re.M), ran.out

    strict = registry(
        "eval", "run", "greet", "--version", str(version), "--dataset", "cases", "--scorer", EXACT,
        "--min-pass-rate", "0.9", "--json",
    )  # fmt: skip
    assert strict.code == 1
    final = json.loads(strict.out)
    assert (final["status"], final["pass_rate"]) == ("completed", 0.75)
    assert strict.err.endswith(f"error: run {final['id']} passed 75.0% of its items, below --min-pass-rate 90.0%\n")


def test_a_run_is_shown_its_failed_items_listed_and_compared_with_another(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    first = stand_in_prompt(evals_live, "greet")
    second = stand_in_prompt(evals_live, "greet", ALWAYS_Y)
    registry("datasets", "push", "cases", str(cases(tmp_path, "y", "n", "n")))
    runs = []
    for version in (first, second):
        ran = registry("eval", "run", "greet", "--version", str(version), "--dataset", "cases", "--json")
        assert ran.code == 0, ran.err
        runs.append(json.loads(ran.out)["id"])
    shown = registry("eval", "show", str(runs[0]))
    assert "items: 3 of 3 done, 1 passed, 0 invalid, 0 errored\n" in shown.out
    failed = registry("eval", "items", str(runs[0]), "--failed")
    assert [line.split()[0] for line in failed.out.splitlines()[1:]] == ["2", "3"]
    assert "exact_match: fail 0 (expected 'y', got 'n')" in failed.out
    assert [item["position"] for item in json.loads(registry("eval", "items", str(runs[0]), "--json").out)] == [1, 2, 3]

    compared = registry("eval", "compare", str(runs[0]), str(runs[1]))
    assert compared.code == 0, compared.err
    assert f"run {runs[1]} against run {runs[0]}: 3 paired items\n" in compared.out
    assert "pass rate: 33.3% -> 100.0%\n" in compared.out
    assert "pass -> fail: 0, fail -> pass: 2 " in compared.out
    assert "improved items: 2, 3\n" in compared.out
    listed = registry("eval", "list", "--prompt", "greet")
    assert [line.split()[0] for line in listed.out.splitlines()[1:]] == [str(runs[1]), str(runs[0])]


def test_a_run_started_without_waiting_is_cancelled(
    registry: Registry, evals_live: Live, stand_in: tuple[StandIn, str], tmp_path: Path
) -> None:
    server, _ = stand_in
    version = stand_in_prompt(evals_live, "slow")
    registry("datasets", "push", "held", str(cases(tmp_path, "hold on", "hold still")))
    try:
        started = registry("eval", "run", "slow", "--version", str(version), "--dataset", "held", "--no-wait")
        assert started.code == 0, started.err
        run_id = int(started.out.split()[1])
        assert started.out == f"run {run_id} queued: 2 items\n"
        eventually(lambda: server.asked("hold on") + server.asked("hold still") > 0, "the run asking the backend")
        cancelled = registry("eval", "cancel", str(run_id))
        assert (cancelled.code, cancelled.out) == (0, f"run {run_id}: cancelled, 0 items done\n")
    finally:
        server.released.set()
    # read through the API: the registry serves from a thread of this process, and the worker's warning as it
    # lets go of the cancelled run may land in the output of a command run meanwhile
    assert evals_live.ok(evals_live.admin.get(f"/v1/evals/runs/{run_id}"))["status"] == "cancelled"


def test_each_kind_of_eval_failure_has_its_exit_code(registry: Registry, evals_live: Live, tmp_path: Path) -> None:
    version = stand_in_prompt(evals_live, "greet")
    registry("datasets", "push", "cases", str(cases(tmp_path, "y")))
    run = ["eval", "run", "greet", "--version", str(version)]
    assert registry(*run, "--dataset", "nope").code == 3
    bad_scorer = registry(*run, "--dataset", "cases", "--scorer", '{"kind": "psychic"}')
    assert bad_scorer.code == 6
    assert "must be one of" in bad_scorer.err
    assert registry(*run, "--dataset", "cases", "--scorer", "{not json").code == 2
    assert registry(*run, "--dataset", "cases@x").code == 2
    assert registry("eval", "show", "999999").code == 3
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"variables": {"answer": "y"}}\nnot json\n')
    refused = registry("datasets", "push", "cases", str(bad_file))
    assert refused.code == 6
    assert "line 2" in refused.err


def test_a_version_without_a_config_runs_with_the_config_named_by_config(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    stand_in_prompt(evals_live, "lender")  # config lender-config v1 on the stand-in
    evals_live.ok(evals_live.admin.post("/v1/prompts", json={"name": "bare"}))
    content = {"kind": "chat", "messages": [{"role": "user", "content": "{{ answer }}"}]}
    evals_live.ok(evals_live.admin.post("/v1/prompts/bare/versions", json=content))
    registry("datasets", "push", "cases", str(cases(tmp_path, "y", "n")))
    run = ["eval", "run", "bare", "--version", "1", "--dataset", "cases"]

    ran = registry(*run, "--config", "lender-config@1")
    refused = registry(*run)

    assert ran.code == 0, ran.err
    assert "completed, bare v1 with lender-config v1 on cases@1\n" in ran.out
    assert "items: 2 of 2 done, 1 passed, 0 invalid, 0 errored\n" in ran.out
    assert refused.code == 6
    assert "links no model config: name the config to evaluate it with in config" in refused.err
    assert registry(*run, "--config", "lender-config@someday").code == 2
    label = registry(*run, "--config", "lender-config@staging")
    assert (label.code, "has no staging version" in label.err) == (6, True)


def test_a_scorers_file_gives_the_scorers_and_the_pass_rule(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    version = stand_in_prompt(evals_live, "greet")
    registry("datasets", "push", "cases", str(cases(tmp_path, "yes", "no", expected="yes")))
    scorers = tmp_path / "scorers.yaml"
    scorers.write_text(
        "scorers:\n  - {kind: contains, value: 'y'}\n  - {kind: exact_match}\npass_rule: {min_passed: 1}\n"
    )
    ran = registry(
        "eval",
        "run",
        "greet",
        "--version",
        str(version),
        "--dataset",
        "cases",
        "--scorers-file",
        str(scorers),
        "--json",
    )
    assert ran.code == 0, ran.err
    final = json.loads(ran.out)
    assert (final["pass_rule"], len(final["scorers"]), final["items_passed"]) == ({"min_passed": 1}, 2, 1)


def test_a_gate_refuses_with_its_evidence_until_a_run_meets_it_and_an_admin_may_override(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    weak = stand_in_prompt(evals_live, "gated", ALWAYS_N)
    strong = stand_in_prompt(evals_live, "gated")
    registry("datasets", "push", "gated-cases", str(cases(tmp_path, "y", "y", "y", "y")))
    gate = registry("gates", "set", "gated", "production", "--dataset", "gated-cases@1", "--min-pass-rate", "0.9")
    assert gate.code == 0, gate.err
    assert gate.out.startswith("gated production: dataset gated-cases@1, pass rate at least 90.0%\n")
    assert registry("gates", "get", "gated", "production").out == gate.out

    refused = registry("promote", "gated", str(strong), "--to", "production")
    assert refused.code == 6
    assert f"no completed evaluation run of version {strong}" in refused.err
    assert "  gate on production: dataset gated-cases@1, min pass rate 0.9\n" in refused.err
    assert "--override-gate" in refused.err

    assert registry("eval", "run", "gated", "--version", str(weak), "--dataset", "gated-cases").code == 0
    below = registry("promote", "gated", str(weak), "--to", "production")
    assert below.code == 6
    assert "0 of 4 items passed" in below.err
    assert re.search(r"^  evidence: .*run_id \d+", below.err, re.M), below.err
    assert registry("promote", "gated", str(weak), "--to", "production", "--override-gate").code == 2, "a reason"
    overridden = registry(
        "promote", "gated", str(weak), "--to", "production", "--override-gate", "--reason", "known gap, fixed next"
    )
    assert overridden.code == 0, overridden.err
    history = registry("history", "gated")
    assert "gate overridden: known gap, fixed next" in history.out

    assert registry("eval", "run", "gated", "--version", str(strong), "--dataset", "gated-cases").code == 0
    accepted = registry("promote", "gated", str(strong), "--to", "production")
    assert accepted.code == 0, accepted.err
    assert f"gated v{strong}: draft -> production (promote)\n" in accepted.out

    assert registry("gates", "rm", "gated", "production").out == "gated production: no gate\n"
    assert registry("gates", "get", "gated", "production").code == 3


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    for done, rate in ((1, 1.0), (3, 0.6667)):
        progress.update({"id": 1, "status": "running", "items_done": done, "total_items": 4, "pass_rate": rate,
                         "cost": 0.0125})  # fmt: skip
    progress.end()
    first, second = stream.getvalue().split("\r")[1:]
    assert first == "[" + "#" * 7 + "-" * 23 + "] 1/4 items, pass rate 100.0%, cost 0.0125"
    # padded to the longer line before it, so nothing of that one is left on screen
    assert second == "[" + "#" * 22 + "-" * 8 + "] 3/4 items, pass rate 66.7%, cost 0.0125 \n"


def test_the_eval_commands_import_the_client_and_not_the_server(
    registry: Registry, evals_live: Live, tmp_path: Path
) -> None:
    version = stand_in_prompt(evals_live, "greet")
    file = cases(tmp_path, "y")
    for args in (
        ["datasets", "push", "cases", str(file)],
        ["eval", "run", "greet", "--version", str(version), "--dataset", "cases"],
        ["eval", "show", "1"],
        ["gates", "set", "greet", "staging", "--dataset", "cases"],
    ):
        code, modules, out = run_and_list_modules(*args, url=evals_live.url, key=evals_live.key)
        assert code in (0, None), out
        assert "prompt_registry_client" in modules
        loaded = [name for name in [*SERVER_MODULES, *HTTPX_COMMAND_LINE] if name in modules]
        assert loaded == [], f"registry {' '.join(args)} imported {loaded}"


class DroppingStream:
    """A client whose event stream drops once mid-run, then is followed again to the end."""

    def __init__(self) -> None:
        self.connects = 0

    def eval_run_events(self, run_id: int) -> Iterator[tuple[str, dict[str, Any]]]:
        self.connects += 1
        yield "progress", {"id": run_id, "status": "running", "items_done": self.connects, "total_items": 2}
        if self.connects == 1:
            raise httpx.ReadError("connection reset")
        yield "done", {"id": run_id, "status": "completed", "items_done": 2, "total_items": 2}


def test_a_dropped_event_stream_is_followed_again_to_the_end() -> None:
    client, stream = DroppingStream(), io.StringIO()
    final = follow(cast(Any, client), 5, Progress(stream, tty=False))
    assert (client.connects, final["status"]) == (2, "completed")
    assert [line.split(", ")[1] for line in stream.getvalue().splitlines()] == ["1/2 items", "2/2 items"]


def test_a_run_that_failed_or_was_cancelled_does_not_pass_whatever_its_pass_rate() -> None:
    run = {"id": 4, "pass_rate": 1.0, "error": None}
    assert verdict({**run, "status": "failed", "error": "the key is over its budget"}, None) == (
        "run 4 failed: the key is over its budget"
    )
    assert verdict({**run, "status": "cancelled"}, 0.5) == "run 4 cancelled"
    assert verdict({**run, "status": "completed"}, 1.0) is None
    assert verdict({**run, "status": "completed", "pass_rate": None}, 0.0) is not None, "no item done: no pass rate"
