"""The API commands start fast because they never import the server: checked by what a run imports.

(The time itself is measured by ``make bench-cli``; a test asserts on imports, which do not vary.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.clients.conftest import Live

SERVER_MODULES = ["scipy", "numpy", "sqlalchemy", "litestar", "registry.app", "registry.settings", "registry.db"]
HTTPX_COMMAND_LINE = ["httpx._main", "rich", "pygments"]  # httpx imports its own CLI when it can; none is used

RUN_AND_LIST_MODULES = """
import json, sys
from registry.cli import main
try:
    main(sys.argv[1:], prog_name="registry")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(k for k, v in sys.modules.items() if v is not None)}))
"""


def run_and_list_modules(*args: str, url: str, key: str) -> tuple[int, list[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(REGISTRY_URL=url, REGISTRY_API_KEY=key)
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, *args], env=env, capture_output=True, text=True, timeout=60
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["code"], report["modules"], done.stdout


def test_an_api_command_imports_the_client_and_not_the_server(live: Live) -> None:
    live.prompt("greet", {"kind": "text", "template": "Hello {{ name }}"})
    for args in (
        ["prompts", "list"],
        ["render", "greet", "--var", "name=Ada"],
        ["experiments", "list"],
        ["datasets", "list"],
        ["eval", "list"],
    ):
        code, modules, out = run_and_list_modules(*args, url=live.url, key=live.key)
        assert code == 0, out
        assert "prompt_registry_client" in modules, "the command ran through the client"
        loaded = [name for name in [*SERVER_MODULES, *HTTPX_COMMAND_LINE] if name in modules]
        assert loaded == [], f"registry {' '.join(args)} imported {loaded}"


def test_help_imports_neither_the_client_nor_the_server() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, "--help"], capture_output=True, text=True, timeout=60
    )
    modules = json.loads(done.stdout.strip().splitlines()[-1])["modules"]
    assert [name for name in [*SERVER_MODULES, "prompt_registry_client", "httpx"] if name in modules] == []
