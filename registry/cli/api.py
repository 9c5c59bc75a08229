"""Options and error handling of the commands that call the API.

Everything here imports only click; the client (and httpx) are imported when a command runs,
and the server's modules never are, so these commands start quickly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, Literal

import click

from registry.cli.output import ExitCode, error_detail, exit_code_for_status, fail, gate_evidence

if TYPE_CHECKING:
    from prompt_registry_client import RegistryClient, RegistryError

Resource = Literal["prompts", "configs"]
DEFAULT_URL = "http://127.0.0.1:8000"

NO_API_KEY = (
    "no API key: set REGISTRY_API_KEY (or pass --api-key); "
    "an admin creates one with 'registry keys create --name NAME --scopes read'"
)

NOT_JSON = (
    "{url} answered something that is not JSON (an HTML page?): is it the registry's API, "
    "and not a proxy's or a sign-in page? (the URL comes from --url or REGISTRY_URL)"
)


def open_client(url: str, api_key: str) -> RegistryClient:
    """A client for one command: no change feed, no background work left behind.

    Two things a one-shot command does not need are skipped, for start-up time (bench/cli_startup.py):
    httpx's own command line, which it imports whenever rich and pygments are installed (about 50 ms;
    a ``None`` in ``sys.modules`` makes httpx take its documented fallback), and, for plain-HTTP URLs,
    the CA bundle that every TLS-capable transport loads (about 30 ms; there is no certificate to check).
    """
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import httpx
    from prompt_registry_client import CachePolicy, RegistryClient

    transport = httpx.HTTPTransport(verify=False) if url.startswith("http://") else None
    return RegistryClient(url, api_key, cache=CachePolicy(watch_changes=False), transport=transport)


def report(exc: RegistryError) -> None:
    """Print an error answer readably (one line, then one line per field) and exit with its code."""
    if exc.status is None:
        fail(f"{exc.detail} (the URL comes from --url or REGISTRY_URL)", ExitCode.UNAVAILABLE)
    click.echo(f"error: {error_detail(exc.status, exc.detail)}", err=True)
    for error in exc.errors:
        click.echo(f"  {error.get('field')}: {error.get('message')}", err=True)
    if exc.type == "gate_failed":
        for line in gate_evidence(exc.body):
            click.echo(f"  {line}", err=True)
        click.echo("  (an admin may promote anyway: 'registry promote ... --override-gate --reason WHY')", err=True)
    if exc.status == 401:
        click.echo("  (the key comes from --api-key or REGISTRY_API_KEY)", err=True)
    raise SystemExit(int(exit_code_for_status(exc.status)))


def api_command(func: Callable[..., None]) -> Callable[..., None]:
    """Add --url/--api-key/--json, open a client, and turn API errors into a message and an exit code."""

    @click.option(
        "--url",
        envvar="REGISTRY_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="Service URL; read from REGISTRY_URL when not given.",
    )
    @click.option("--api-key", envvar="REGISTRY_API_KEY", help="API key; read from REGISTRY_API_KEY when not given.")
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of text.")
    @wraps(func)
    def wrapper(url: str, api_key: str | None, as_json: bool, **kwargs: Any) -> None:
        if not api_key:
            fail(NO_API_KEY, ExitCode.UNAUTHORIZED)
        client = open_client(url, api_key)
        import httpx
        from prompt_registry_client import RegistryError

        with client:
            try:
                func(client, as_json, **kwargs)
            except RegistryError as exc:
                report(exc)
            except json.JSONDecodeError:  # every file and option the commands read is checked where it is read
                fail(NOT_JSON.format(url=url), ExitCode.UNAVAILABLE)
            except httpx.TransportError as exc:  # a streamed export broken halfway (the client maps the rest)
                fail(f"the connection to {url} broke: {exc}", ExitCode.UNAVAILABLE)
            except BrokenPipeError:
                raise
            except OSError as exc:  # a file to read or write: a missing folder, no permission, a full disk
                fail(f"cannot read or write {exc.filename or 'a file'}: {exc.strerror or exc}", ExitCode.ERROR)

    return wrapper


def resource_of(config: bool) -> Resource:
    return "configs" if config else "prompts"


config_flag = click.option("--config", is_flag=True, help="NAME is a model config, not a prompt.")
