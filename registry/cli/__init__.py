"""The ``registry`` command.

Operator commands (``serve``, ``worker``, ``migrate``, ``keys``; ``server_commands``; ``backup``,
``restore``, ``doctor``; ``admin_commands``) work on the database directly and import the server inside
their handlers. Product commands (prompts,
versions, configs, render, complete, metrics, events, usage, audit, webhooks, experiments, sync,
export, eval, datasets, gates; ``api_commands``, ``experiment_commands`` and ``eval_commands``) go
through the REST API with an API key, so they work against any deployment, are checked and audited
like any other caller, and start fast: they import only click, the Python client and these small modules.
"""

from __future__ import annotations

from typing import Any

import click

from registry import __version__
from registry.cli import admin_commands, api_commands, eval_commands, experiment_commands, server_commands
from registry.cli.output import EXIT_CODES_HELP


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP
    + "\n\b\nThe API commands read the service URL from REGISTRY_URL (default http://127.0.0.1:8000)\n"
    "and the API key from REGISTRY_API_KEY (or --url and --api-key); the operator commands\n"
    "read REGISTRY_DATABASE_URL and the other REGISTRY_* settings.",
)
@click.version_option(__version__, prog_name="prompt-registry")
def main() -> None:
    """prompt-registry: serve the API, migrate, manage keys; prompts, configs, experiments and evaluations."""


for command in [
    *server_commands.COMMANDS,
    *admin_commands.COMMANDS,
    *api_commands.COMMANDS,
    experiment_commands.experiments,
    *eval_commands.COMMANDS,
]:
    main.add_command(command)

# Helpers that benchmarks and tests import from here (defined with the operator commands).
_SERVER_HELPERS = ("bootstrap_admin_key_for", "migrate_database", "run_server", "with_session")


def __getattr__(name: str) -> Any:
    if name in _SERVER_HELPERS:
        return getattr(server_commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main"]
