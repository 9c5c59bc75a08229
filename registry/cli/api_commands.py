"""Commands for product people and analysts: prompts, versions, configs, rendering, completions,
metrics, events, usage, the audit log and webhooks, all through the REST API with an API key.

So they work against any deployment and are checked and audited like any other caller. Only
click and the standard library are imported here; the client comes with ``api_command``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from registry.cli.api import Resource, api_command, config_flag, resource_of
from registry.cli.output import ExitCode, echo_lines, emit, fail, size_problem, table

if TYPE_CHECKING:
    from prompt_registry_client import RegistryClient
    from prompt_registry_client._core import Label

EVENT_BATCH = 1000  # the most POST /v1/events takes at once
EVENT_FIELDS = (
    "(an event has unit, metric and timestamp, ISO 8601 with a time zone such as 2026-01-31T12:00:00Z, "
    "and may have value, experiment and idempotency_key)"
)
LABELS = click.Choice(["production", "staging", "latest"])

# --------------------------------------------------------------------------- prompts and configs


@click.group()
def prompts() -> None:
    """Prompts: list, show, create (versions: 'registry versions')."""


@click.group()
def configs() -> None:
    """Model configs: list, show, create (versions, promote, rollback, history and diff take --config)."""


def _list(client: RegistryClient, as_json: bool, resource: Resource, prefix: str | None, tag: str | None) -> None:
    rows = list(client.list_resources(resource, prefix=prefix, tag=tag))
    emit(as_json, rows, lambda: table(rows, ["name", "latest_version", "tags", "updated_at", "updated_by"]))


@prompts.command("list")
@click.option("--prefix", help="Only names starting with this, e.g. a folder 'support/'.")
@click.option("--tag", help="Only prompts with this tag.")
@config_flag
@api_command
def prompts_list(client: RegistryClient, as_json: bool, prefix: str | None, tag: str | None, config: bool) -> None:
    """List prompts (or configs with --config)."""
    _list(client, as_json, resource_of(config), prefix, tag)


@configs.command("list")
@click.option("--prefix", help="Only names starting with this.")
@click.option("--tag", help="Only configs with this tag.")
@api_command
def configs_list(client: RegistryClient, as_json: bool, prefix: str | None, tag: str | None) -> None:
    """List model configs."""
    _list(client, as_json, "configs", prefix, tag)


def _show(
    client: RegistryClient, as_json: bool, resource: Resource, name: str, label: str | None, version: int | None
) -> None:
    result = client.resolve(name, resource, label=label, version=version)

    def render() -> None:
        if resource == "configs":  # a config resolves to the version itself
            _print_version(result)
            return
        held = result["version"]
        labels = ", ".join(f"{k} v{v}" for k, v in (result.get("labels") or {}).items() if v is not None)
        click.echo(f"{result['name']} v{held['version']} ({held['state']})")
        if result.get("description"):
            click.echo(f"description: {result['description']}")
        if result.get("tags"):
            click.echo(f"tags: {','.join(result['tags'])}")
        click.echo(f"labels: {labels or '(none)'}")
        click.echo(f"author: {held.get('author')}, {held.get('created_at')}: {held.get('commit_message') or ''}")
        _print_version_content(held)

    emit(as_json, result, render)


def _print_version(held: dict[str, Any]) -> None:
    """One version of a prompt or a config: who made it, then its content."""
    owner = held.get("prompt") or held.get("config")
    click.echo(f"{owner} v{held['version']} ({held['state']}) by {held['author']}, {held['created_at']}")
    if held.get("commit_message"):
        click.echo(f"message: {held['commit_message']}")
    _print_version_content(held)


def _print_version_content(held: dict[str, Any]) -> None:
    if held.get("config") and "backend" not in held:
        linked = held["config"]
        click.echo(f"config: {linked.get('name', linked.get('config'))} v{linked.get('version')}")
    if held.get("variables"):
        click.echo(f"variables: {','.join(held['variables'])}")
    if held.get("template") is not None:
        click.echo("template:")
        echo_lines(held["template"])
    for message in held.get("messages") or []:
        click.echo(f"[{message['role']}]")
        echo_lines(message["content"])
    if "backend" in held:
        click.echo(f"backend: {held['backend']}, model: {held['model']}")
        click.echo(f"params: {json.dumps(held.get('params') or {}, sort_keys=True)}")


label_option = click.option("--label", type=LABELS, help="Which label (default: production).")
version_option = click.option("--version", "version", type=click.IntRange(min=1), help="A version number instead.")


@prompts.command("show")
@click.argument("name")
@label_option
@version_option
@api_command
def prompts_show(client: RegistryClient, as_json: bool, name: str, label: str | None, version: int | None) -> None:
    """Show prompt NAME: its production version (or --label, --version), labels and content."""
    _show(client, as_json, "prompts", name, label, version)


@configs.command("show")
@click.argument("name")
@label_option
@version_option
@api_command
def configs_show(client: RegistryClient, as_json: bool, name: str, label: str | None, version: int | None) -> None:
    """Show model config NAME: its production version (or --label, --version) and settings."""
    _show(client, as_json, "configs", name, label, version)


def _create(client: RegistryClient, as_json: bool, resource: Resource, name: str, description: str, tags: str) -> None:
    wanted = [t.strip() for t in tags.split(",") if t.strip()]
    result = client.create_resource(name, resource, description=description, tags=wanted)
    emit(as_json, result, lambda: click.echo(f"created {resource[:-1]} {result['name']}"))


description_option = click.option("--description", default="", help="What it is for.")
tags_option = click.option("--tags", default="", help="Comma-separated tags, e.g. support,email.")


@prompts.command("create")
@click.argument("name")
@description_option
@tags_option
@api_command
def prompts_create(client: RegistryClient, as_json: bool, name: str, description: str, tags: str) -> None:
    """Create prompt NAME (then add versions with 'registry versions create')."""
    _create(client, as_json, "prompts", name, description, tags)


@configs.command("create")
@click.argument("name")
@description_option
@tags_option
@api_command
def configs_create(client: RegistryClient, as_json: bool, name: str, description: str, tags: str) -> None:
    """Create model config NAME (then add versions with 'registry versions create --config')."""
    _create(client, as_json, "configs", name, description, tags)


# --------------------------------------------------------------------------- versions


@click.group()
def versions() -> None:
    """Versions of a prompt or config: list, show, create from a file."""


@versions.command("list")
@click.argument("name")
@click.option("--state", type=click.Choice(["draft", "staging", "production", "archived"]))
@config_flag
@api_command
def versions_list(client: RegistryClient, as_json: bool, name: str, state: str | None, config: bool) -> None:
    """List versions of NAME, newest first."""
    rows = list(client.list_versions(name, resource_of(config), state=state))
    emit(as_json, rows, lambda: table(rows, ["version", "state", "author", "created_at", "commit_message"]))


@versions.command("show")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@config_flag
@api_command
def versions_show(client: RegistryClient, as_json: bool, name: str, version: int, config: bool) -> None:
    """Show VERSION of NAME."""
    result = client.get_version(name, version, resource_of(config))
    emit(as_json, result, lambda: _print_version(result))


def read_text(file: Path) -> str:
    """A file's text ('-': stdin), as UTF-8; one that cannot be read is a usage error naming it, not a traceback."""
    try:
        return sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {'stdin' if str(file) == '-' else file} as UTF-8 text: {exc}", ExitCode.USAGE)


MAX_DOCUMENT_VALUES = 100_000
MAX_DOCUMENT_DEPTH = 64


def read_document(file: Path) -> Any:
    """What a JSON or YAML file (by its suffix; '-' is stdin, read as JSON) holds.

    A key given twice is refused (JSON and YAML readers keep the last one silently, so a second
    ``template:`` would replace the first unseen), and so is a file whose aliases expand past a bound.
    """
    text = read_text(file)
    import yaml

    what = "YAML" if file.suffix in (".yaml", ".yml") else "JSON"
    try:
        loaded = _load_yaml(text) if what == "YAML" else json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        fail(f"{file} is nested deeper than {MAX_DOCUMENT_DEPTH} levels", ExitCode.USAGE)
    except (ValueError, yaml.YAMLError) as exc:
        fail(f"{file} is not valid {what}: {exc}", ExitCode.USAGE)
    problem = size_problem(loaded, max_values=MAX_DOCUMENT_VALUES, max_depth=MAX_DOCUMENT_DEPTH)
    if problem:
        fail(f"{file} {problem}", ExitCode.USAGE)
    return loaded


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"the key {', '.join(repr(k) for k in twice)} is given twice")
    return dict(pairs)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load``, refusing a mapping that gives a key twice."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            own = [key for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]  # '<<: *base' may repeat
            keys = [self.construct_object(key, deep=deep) for key in own]
            twice = sorted({str(key) for key in keys if keys.count(key) > 1})
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {', '.join(repr(k) for k in twice)} is given twice", node.start_mark
                )
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=Loader)  # noqa: S506  # a SafeLoader


def read_mapping(file: Path) -> dict[str, Any]:
    """A JSON or YAML file holding one object."""
    loaded = read_document(file)
    if not isinstance(loaded, dict):
        fail(f"{file} must hold an object (a mapping)", ExitCode.USAGE)
    return loaded


def version_body(file: Path, *, config: bool, link: str | None, message: str | None) -> dict[str, Any]:
    """The body of a new version: a .json/.yaml file is the API's body; any other file is a text template."""
    if config or file.suffix in (".json", ".yaml", ".yml"):
        body = read_mapping(file)
        if not config:
            body.setdefault("kind", "chat" if "messages" in body else "text")
    else:
        body = {"kind": "text", "template": read_text(file)}
    if link:
        name, _, which = link.rpartition(":")
        if not name or not which:
            raise click.BadParameter(f"'{link}' is not CONFIG:VERSION or CONFIG:LABEL", param_hint="--link-config")
        body["config"] = {"name": name, "version": int(which)} if which.isdigit() else {"name": name, "label": which}
    if message is not None:
        body["commit_message"] = message
    return body


@versions.command("create")
@click.argument("name")
@click.option(
    "--file",
    "file",
    required=True,
    type=click.Path(exists=False, dir_okay=False, path_type=Path),
    help="The template as text, or a .json/.yaml file with the API's body "
    "(kind, template or messages, input_schema, config); '-' reads a text template from stdin.",
)
@click.option("--message", help="Commit message, for the history.")
@click.option("--link-config", "link", help="Run with this model config: CONFIG:VERSION or CONFIG:LABEL.")
@config_flag
@api_command
def versions_create(
    client: RegistryClient, as_json: bool, name: str, file: Path, message: str | None, link: str | None, config: bool
) -> None:
    """Create a version of NAME from a file (a draft; an identical newest version is returned instead).

    For a config (--config) the file is the API's body: backend, model, params, prices.
    """
    if str(file) != "-" and not file.exists():
        fail(f"no file {file}", ExitCode.USAGE)
    result = client.create_version(
        name, version_body(file, config=config, link=link, message=message), resource_of(config)
    )

    def render() -> None:
        owner = result.get("prompt") or result.get("config")
        click.echo(f"{owner} v{result['version']} ({result['state']})")

    emit(as_json, result, render)


# --------------------------------------------------------------------------- states


@click.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--to", "to", required=True, type=click.Choice(["staging", "production", "archived"]))
@click.option("--expected-current", type=int, help="Version you believe holds the state now (default: read it).")
@click.option("--reason", help="Why, for the history (with --override-gate: why the gate is overridden).")
@click.option(
    "--override-gate",
    is_flag=True,
    help="Promote although the state's evaluation gate refuses (admin scope; needs --reason, kept in the audit log).",
)
@config_flag
@api_command
def promote(
    client: RegistryClient,
    as_json: bool,
    name: str,
    version: int,
    to: str,
    expected_current: int | None,
    reason: str | None,
    override_gate: bool,
    config: bool,
) -> None:
    """Move VERSION of NAME to staging, production or archived.

    A gated state refuses a version without evaluation evidence that meets the gate (exit 6, naming
    the evidence); an admin may pass --override-gate with a --reason.
    """
    if override_gate and not reason:
        raise click.UsageError("--override-gate needs --reason: why the gate is overridden")
    kwargs: dict[str, Any] = {"reason": reason, "override_gate": reason if override_gate else None}
    if expected_current is not None:
        kwargs["expected_current"] = expected_current
    result = client.promote(name, version, to, resource_of(config), **kwargs)
    emit(as_json, result, lambda: _print_changes(result))


@click.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1), required=False)
@click.option("--reason", required=True, help="Why you roll back (kept in the history).")
@config_flag
@api_command
def rollback(client: RegistryClient, as_json: bool, name: str, version: int | None, reason: str, config: bool) -> None:
    """Put an earlier production VERSION of NAME back (default: the previous one)."""
    result = client.rollback(name, reason, version, resource_of(config))
    emit(as_json, result, lambda: _print_changes(result))


def _print_changes(result: dict[str, Any]) -> None:
    if not result["changed"]:
        click.echo(f"{result['name']} v{result['version']} is already {result['state']}; nothing changed")
    for change in result["changes"]:
        moved = f"{change['from_state']} -> {change['to_state']}"
        click.echo(f"{result['name']} v{change['version']}: {moved} ({change['action']})")


@click.command()
@click.argument("name")
@config_flag
@api_command
def history(client: RegistryClient, as_json: bool, name: str, config: bool) -> None:
    """State transitions of NAME, newest first."""
    rows = list(client.history(name, resource_of(config)))
    emit(
        as_json,
        rows,
        lambda: table(rows, ["created_at", "version", "from_state", "to_state", "action", "actor", "reason"]),
    )


@click.command()
@click.argument("name")
@click.argument("from_version", type=click.IntRange(min=1))
@click.argument("to_version", type=click.IntRange(min=1))
@config_flag
@api_command
def diff(client: RegistryClient, as_json: bool, name: str, from_version: int, to_version: int, config: bool) -> None:
    """Differences between two versions of NAME."""
    result = client.diff(name, from_version, to_version, resource_of(config))

    def render() -> None:
        if result.get("content_diff"):
            echo_lines(result["content_diff"])
        for label, key in (
            ("input schema", "input_schema_changes"),
            ("config", "config_changes"),
            ("config", "changes"),
        ):
            for change in result.get(key) or []:
                click.echo(f"{label}: {change['field']}: {change['before']!r} -> {change['after']!r}")
        if not any(result.get(k) for k in ("content_diff", "input_schema_changes", "config_changes", "changes")):
            click.echo("no differences")

    emit(as_json, result, render)


# --------------------------------------------------------------------------- render and complete


def parse_variables(pairs: tuple[str, ...], as_json: str | None) -> dict[str, Any]:
    """``--vars '{"n": 3}'`` (JSON: numbers, lists...) then each ``--var KEY=VALUE`` (a string)."""
    variables: dict[str, Any] = {}
    if as_json:
        try:
            loaded = json.loads(as_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--vars") from exc
        except RecursionError as exc:
            raise click.BadParameter("not JSON: nested too deep", param_hint="--vars") from exc
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--vars")
        variables.update(loaded)
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint="--var")
        variables[key] = value
    return variables


var_option = click.option("--var", "pairs", multiple=True, help="A variable, KEY=VALUE (a string); repeatable.")
vars_option = click.option("--vars", "vars_json", help="Variables as a JSON object, e.g. '{\"max_words\": 20}'.")
unit_option = click.option("--unit", help="The unit (user, session): a running experiment routes it to its variant.")


@click.command()
@click.argument("name")
@var_option
@vars_option
@label_option
@version_option
@unit_option
@api_command
def render(
    client: RegistryClient,
    as_json: bool,
    name: str,
    pairs: tuple[str, ...],
    vars_json: str | None,
    label: str | None,
    version: int | None,
    unit: str | None,
) -> None:
    """Render prompt NAME with variables on the service, as an app would get it."""
    variables = parse_variables(pairs, vars_json)
    result = client.render_on_service(name, variables, label=label, version=version, unit=unit)

    def show() -> None:
        if result.get("text") is not None:
            echo_lines(result["text"])
        for message in result.get("messages") or []:
            click.echo(f"[{message['role']}]")
            echo_lines(message["content"])
        used = f"{result['prompt']} v{result['version']} ({result['state']})"
        if result.get("config"):
            used += f", config {result['config']['name']} v{result['config']['version']}"
        if result.get("experiment"):
            used += f", experiment {result['experiment']['key']} variant {result['experiment']['variant']}"
        click.echo(used, err=True)

    emit(as_json, result, show)


@click.command()
@click.argument("name")
@var_option
@vars_option
@label_option
@version_option
@unit_option
@click.option("--max-tokens", type=click.IntRange(min=1), help="At most this many tokens (lower than the config's).")
@click.option("--seed", type=int, help="Sampling seed, where the backend honours one.")
@click.option("--no-stream", is_flag=True, help="Wait for the whole answer instead of streaming it.")
@api_command
def complete(
    client: RegistryClient,
    as_json: bool,
    name: str,
    pairs: tuple[str, ...],
    vars_json: str | None,
    label: str | None,
    version: int | None,
    unit: str | None,
    max_tokens: int | None,
    seed: int | None,
    no_stream: bool,
) -> None:
    """Run prompt NAME with its model config; the answer streams to the terminal as it is generated.

    What ran (prompt and config versions) and the usage go to stderr, so stdout holds only the answer.
    """
    from prompt_registry_client import CompletionDone, CompletionMetadata, TextDelta

    variables = parse_variables(pairs, vars_json)
    options: dict[str, Any] = {
        "label": cast("Label | None", label),
        "version": version,
        "unit": unit,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    if as_json:
        body = {"variables": variables, **{k: v for k, v in options.items() if v is not None}}
        response = client.request("POST", f"/v1/prompts/{_path(name)}/complete", json=body)
        click.echo(json.dumps(response.json(), indent=2))
        return
    if no_stream:
        completion = client.complete(name, variables, **options)
        echo_lines(completion.text)
        click.echo(
            f"{completion.usage.input_tokens} tokens in, {completion.usage.output_tokens} out, "
            f"cost {completion.cost:g}",
            err=True,
        )
        return
    ended_with_newline = True
    with client.complete(name, variables, stream=True, **options) as stream:
        for event in stream:
            if isinstance(event, TextDelta) and event.text:
                click.echo(event.text, nl=False)
                sys.stdout.flush()
                ended_with_newline = event.text.endswith("\n")
            elif isinstance(event, CompletionMetadata):
                ran = f"{event.prompt} v{event.version}, config {event.config.name} v{event.config.version}"
                click.echo(f"({ran}{', fallback' if event.fallback_used else ''})", err=True)
            elif isinstance(event, CompletionDone):
                if not ended_with_newline:
                    click.echo()
                    ended_with_newline = True
                usage = event.usage
                click.echo(
                    f"({usage.input_tokens} tokens in, {usage.output_tokens} out, cost {event.cost:g}, "
                    f"{event.latency_ms:.0f} ms, finish: {event.finish_reason})",
                    err=True,
                )
    if not ended_with_newline:
        click.echo()


def _path(name: str) -> str:
    from prompt_registry_client import encode_name

    return encode_name(name)


# --------------------------------------------------------------------------- metrics and events


@click.group()
def metrics() -> None:
    """Metrics that experiments measure: list, create."""


def add_list_command(
    group: click.Group, what: str, fetch: Callable[[RegistryClient], Iterable[dict[str, Any]]], columns: list[str]
) -> None:
    """``registry GROUP list``: every item the API lists, as a table (or --json)."""

    @group.command("list", help=f"List {what}.")
    @api_command
    def listing(client: RegistryClient, as_json: bool) -> None:
        rows = list(fetch(client))
        emit(as_json, rows, lambda: table(rows, columns))


add_list_command(
    metrics, "metrics", lambda client: client.list_metrics(), ["key", "kind", "aggregation", "direction", "description"]
)


@metrics.command("create")
@click.argument("key")
@click.option("--kind", required=True, type=click.Choice(["binomial", "continuous"]), help="Yes/no, or a number.")
@click.option(
    "--aggregation",
    type=click.Choice(["sum", "mean", "count", "max", "any"]),
    help="How a unit's events combine (default: any for binomial, sum for continuous).",
)
@click.option("--direction", type=click.Choice(["higher", "lower"]), default="higher", show_default=True)
@click.option("--description", default="", help="What it measures.")
@api_command
def metrics_create(
    client: RegistryClient,
    as_json: bool,
    key: str,
    kind: str,
    aggregation: str | None,
    direction: str,
    description: str,
) -> None:
    """Define metric KEY (events name it in their 'metric' field)."""
    definition: dict[str, Any] = {"key": key, "kind": kind, "direction": direction, "description": description}
    if aggregation:
        definition["aggregation"] = aggregation
    result = client.create_metric(definition)
    emit(
        as_json,
        result,
        lambda: click.echo(f"created metric {result['key']} ({result['kind']}, {result['aggregation']})"),
    )


@click.group()
def events() -> None:
    """Outcome events (what experiments measure): send them from a file."""


def read_events(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, event) from a CSV file (a header row: unit,metric,timestamp,value,...) or JSON Lines.

    A row that cannot be read (a CSV cell longer than the csv module's limit, a line nested too deep for JSON) is a
    one-line error naming the file and the row, as a line that is not JSON is, not a traceback.
    """
    text = read_text(file)
    if file.suffix == ".csv":
        yield from _csv_events(file, text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            fail(f"{file} line {number} is not JSON: {exc}", ExitCode.VALIDATION)
        except RecursionError:
            fail(f"{file} line {number} is not JSON: nested too deep", ExitCode.VALIDATION)
        if not isinstance(event, dict):
            fail(f"{file} line {number} is not a JSON object", ExitCode.VALIDATION)
        yield number, event


def _csv_events(file: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, event) from CSV text; the header is row 1."""
    reader = csv.DictReader(io.StringIO(text))
    number = 0  # the last row read
    try:
        if reader.fieldnames is None:  # an empty file
            return
        number = 1
        for number, row in enumerate(reader, start=2):  # a row that fails is the one after the last read
            yield number, {k.strip(): v for k, v in row.items() if k and v not in (None, "")}
    except csv.Error as exc:
        fail(f"{file} row {number + 1} is not valid CSV: {exc}", ExitCode.VALIDATION)


def prepared(event: dict[str, Any]) -> dict[str, Any]:
    """A value read as a number, and an idempotency key made from the event when it has none.

    The key is the event's own content, so sending the same file twice records each event once.
    """
    event = dict(event)
    if isinstance(event.get("value"), str):
        with contextlib.suppress(ValueError):  # else the service names the field
            event["value"] = float(event["value"])
    if "idempotency_key" not in event:
        canonical = json.dumps(event, sort_keys=True, default=str)
        event["idempotency_key"] = "file-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]
    return event


@events.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@api_command
def events_send(client: RegistryClient, as_json: bool, file: Path) -> None:
    """Send the events in FILE: .csv with a header row, else JSON Lines (one object a line).

    Each event has unit, metric and timestamp (ISO 8601 with a time zone, e.g. 2026-01-31T12:00:00Z),
    optionally value (default 1), experiment and idempotency_key (default: made from the event, so
    sending a file again records nothing twice). Exits 6 when any event was rejected.
    """
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "buffered": 0}
    rejected: list[dict[str, Any]] = []
    rows = read_events(file)
    while batch := list(itertools.islice(rows, EVENT_BATCH)):
        answer = client.record_events([prepared(event) for _, event in batch])
        for item in answer["items"]:
            counts[item["status"]] = counts.get(item["status"], 0) + 1
            if item["status"] == "rejected":
                rejected.append({"line": batch[item["index"]][0], "errors": item.get("errors") or []})

    def show() -> None:
        click.echo(", ".join(f"{n} {status}" for status, n in counts.items() if n or status != "buffered"))
        for row in rejected:
            problems = "; ".join(f"{e['field']}: {e['message']}" for e in row["errors"])
            click.echo(f"line {row['line']}: {problems}", err=True)
        if rejected:
            click.echo(EVENT_FIELDS, err=True)

    emit(as_json, {"counts": counts, "rejected": rejected}, show)
    if rejected:
        raise SystemExit(int(ExitCode.VALIDATION))


# --------------------------------------------------------------------------- usage, audit, webhooks


@click.command()
@click.option(
    "--group-by",
    multiple=True,
    type=click.Choice(["prompt", "version", "config", "config_version", "key", "day", "experiment", "variant"]),
    help="Group by this (repeatable; default: prompt, version, config, key, day).",
)
@click.option("--since", help="First day, YYYY-MM-DD (default: 30 days ago).")
@click.option("--until", help="Last day, YYYY-MM-DD, inclusive (default: today).")
@click.option("--prompt", help="Only this prompt.")
@click.option("--key", help="Only this API key id.")
@api_command
def usage(
    client: RegistryClient,
    as_json: bool,
    group_by: tuple[str, ...],
    since: str | None,
    until: str | None,
    prompt: str | None,
    key: str | None,
) -> None:
    """Completion usage and cost (needs the analyze scope)."""
    report = client.usage(group_by=list(group_by) or None, since=since, until=until, prompt=prompt, key=key)

    def show() -> None:
        measures = ["requests", "errors", "input_tokens", "output_tokens", "cost", "mean_latency_ms"]
        table(report["items"], [*report["group_by"], *measures])
        if report.get("truncated"):
            click.echo("(truncated: narrow the days or group by less)", err=True)

    emit(as_json, report, show)


@click.command()
@click.option("--actor", help="Only entries by this actor.")
@click.option("--resource-type", help="Only this kind of resource, e.g. prompt, config, experiment, api_key.")
@click.option("--resource-name", help="Only this resource.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@api_command
def audit(
    client: RegistryClient,
    as_json: bool,
    actor: str | None,
    resource_type: str | None,
    resource_name: str | None,
    limit: int,
) -> None:
    """The audit log, newest first (needs the admin scope)."""
    entries = client.audit(actor=actor, resource_type=resource_type, resource_name=resource_name)
    rows = list(itertools.islice(entries, limit))
    emit(as_json, rows, lambda: table(rows, ["created_at", "actor", "action", "resource_type", "resource_name"]))


@click.group()
def webhooks() -> None:
    """Webhooks: create, list, show, enable, disable, ping or delete them, their deliveries, and send a delivery
    again (admin scope)."""


WEBHOOK_COLUMNS = ["id", "url", "events", "enabled", "consecutive_failures", "disabled_reason", "created_at"]


@webhooks.command("list")
@click.option(
    "--enabled/--disabled",
    "enabled",
    default=None,
    help="Only enabled webhooks, or only disabled ones (by an admin, or by the dispatcher after failing).",
)
@api_command
def webhooks_list(client: RegistryClient, as_json: bool, enabled: bool | None) -> None:
    """List webhooks, with whether each is enabled and how many deliveries failed in a row."""
    rows = list(client.list_webhooks(enabled=enabled))
    emit(as_json, rows, lambda: table(rows, WEBHOOK_COLUMNS))


def _show_webhook(as_json: bool, webhook: dict[str, Any]) -> None:
    def show() -> None:
        state = "enabled" if webhook["enabled"] else f"disabled since {webhook['disabled_at']}"
        click.echo(f"webhook {webhook['id']} {webhook['url']}: {state}")
        if webhook.get("description"):
            click.echo(f"  description: {webhook['description']}")
        if not webhook["enabled"] and webhook.get("disabled_reason"):
            click.echo(f"  reason: {webhook['disabled_reason']}")
        click.echo(f"  events: {', '.join(webhook['events'])}")
        if webhook["consecutive_failures"]:
            click.echo(f"  failing since {webhook['failing_since']}: {webhook['consecutive_failures']} in a row")

    emit(as_json, webhook, show)


@webhooks.command("create")
@click.argument("webhook_url", metavar="WEBHOOK_URL")
@click.option(
    "--event",
    "events",
    multiple=True,
    required=True,
    help="An event type to deliver: exact (prompt.promoted), a family (prompt.*) or * (repeatable).",
)
@click.option("--description", default="", help="What the webhook is for.")
@api_command
def webhooks_create(
    client: RegistryClient, as_json: bool, webhook_url: str, events: tuple[str, ...], description: str
) -> None:
    """Subscribe WEBHOOK_URL to events; prints the signing secret, which is shown this once only.

    (--url is the registry's own URL, as for every command.)
    """
    created = client.create_webhook(webhook_url, list(events), description=description)

    def show() -> None:
        webhook = created["webhook"]
        click.echo(f"webhook {webhook['id']} {webhook['url']}: created")
        click.echo(f"  events: {', '.join(webhook['events'])}")
        click.echo(f"  secret: {created['secret']}")
        click.echo("  (the secret is shown only now: keep it; receivers check deliveries' signatures with it)")

    emit(as_json, created, show)


@webhooks.command("show")
@click.argument("webhook_id", type=int)
@api_command
def webhooks_show(client: RegistryClient, as_json: bool, webhook_id: int) -> None:
    """Webhook WEBHOOK_ID: whether it is enabled (if not, since when and why) and its failures in a row."""
    _show_webhook(as_json, client.get_webhook(webhook_id))


@webhooks.command("enable")
@click.argument("webhook_id", type=int)
@api_command
def webhooks_enable(client: RegistryClient, as_json: bool, webhook_id: int) -> None:
    """Deliver events to webhook WEBHOOK_ID again from now on (deliveries that died meanwhile stay dead)."""
    _show_webhook(as_json, client.enable_webhook(webhook_id))


@webhooks.command("disable")
@click.argument("webhook_id", type=int)
@api_command
def webhooks_disable(client: RegistryClient, as_json: bool, webhook_id: int) -> None:
    """Send webhook WEBHOOK_ID nothing more; its waiting deliveries are marked dead."""
    _show_webhook(as_json, client.disable_webhook(webhook_id))


@webhooks.command("ping")
@click.argument("webhook_id", type=int)
@api_command
def webhooks_ping(client: RegistryClient, as_json: bool, webhook_id: int) -> None:
    """Queue a signed test delivery (type ping) to webhook WEBHOOK_ID; exits 4 while it is disabled."""
    client.ping_webhook(webhook_id)
    result = {"webhook": webhook_id, "queued": "ping"}
    emit(
        as_json,
        result,
        lambda: click.echo(f"webhook {webhook_id}: ping queued (see 'registry webhooks deliveries {webhook_id}')"),
    )


@webhooks.command("delete")
@click.argument("webhook_id", type=int)
@api_command
def webhooks_delete(client: RegistryClient, as_json: bool, webhook_id: int) -> None:
    """Delete webhook WEBHOOK_ID and its delivery log: nothing more is sent to it."""
    client.delete_webhook(webhook_id)
    emit(as_json, {"webhook": webhook_id, "deleted": True}, lambda: click.echo(f"webhook {webhook_id}: deleted"))


@webhooks.command("deliveries")
@click.argument("webhook_id", type=int)
@click.option("--status", type=click.Choice(["pending", "retrying", "succeeded", "dead"]))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@api_command
def webhooks_deliveries(client: RegistryClient, as_json: bool, webhook_id: int, status: str | None, limit: int) -> None:
    """Deliveries of webhook WEBHOOK_ID, newest first."""
    rows = list(itertools.islice(client.webhook_deliveries(webhook_id, status=status), limit))
    columns = ["id", "event_type", "status", "attempts", "last_status_code", "last_error", "created_at"]
    emit(as_json, rows, lambda: table(rows, columns))


@webhooks.command("redeliver")
@click.argument("webhook_id", type=int)
@click.argument("delivery_id", type=int)
@api_command
def webhooks_redeliver(client: RegistryClient, as_json: bool, webhook_id: int, delivery_id: int) -> None:
    """Send delivery DELIVERY_ID of webhook WEBHOOK_ID again, from its first attempt."""
    result = client.redeliver(webhook_id, delivery_id)
    emit(as_json, result, lambda: click.echo(f"delivery {result['id']} ({result['event_type']}): {result['status']}"))


# --------------------------------------------------------------------------- prompts as code


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change, as a diff, and change nothing.")
@click.option(
    "--promote",
    "promote_to",
    type=click.Choice(["staging", "production"]),
    help="Then move the version each file holds (or the sync created) to this state.",
)
@click.option("--message", default="registry sync", show_default=True, help="Commit message of new versions.")
@api_command
def sync(
    client: RegistryClient, as_json: bool, folder: Path, dry_run: bool, promote_to: str | None, message: str
) -> None:
    """Push the prompt files in FOLDER: a new version where a prompt changed, nothing where it did not.

    Datasets in FOLDER/datasets/NAME.jsonl are pushed first (a new version only where the items
    differ). Exits 6 when a gate refused a --promote (the evidence is printed), 1 on other failures.
    """
    from registry.promptfiles.sync import run_sync

    echo, echo_error = click.echo, lambda line: click.echo(line, err=True)
    result = run_sync(
        client,
        folder,
        dry_run=dry_run,
        promote_to=promote_to,
        message=message,
        echo=echo,
        echo_error=echo_error,
        as_json=as_json,
    )
    if not result:
        sys.exit(int(ExitCode.VALIDATION) if result.gate_refused else 1)


@click.command("export")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", help="Only prompts whose names start with this, e.g. a folder 'support/'.")
@click.option(
    "--label",
    type=click.Choice(["production", "staging", "latest"]),
    default="production",
    show_default=True,
    help="Export the version this label holds (latest: the newest); a prompt with none is named and skipped.",
)
@api_command
def export_prompts(client: RegistryClient, as_json: bool, folder: Path, prefix: str | None, label: str) -> None:
    """Write the version LABEL holds of each prompt to FOLDER as prompt files (what `registry sync` reads).

    A file already in FOLDER changes only where it differs: comments, layout and config labels stay.
    Each dataset's latest version goes to FOLDER/datasets/NAME.jsonl (left as it is when it holds the same items).
    Exits 1 when the service named a prompt or dataset whose file would lie outside FOLDER (not written).
    """
    from registry.promptfiles.sync import run_export

    echo_error = lambda line: click.echo(line, err=True)  # noqa: E731
    if not run_export(
        client, folder, prefix=prefix, echo=click.echo, label=label, as_json=as_json, echo_error=echo_error
    ):
        sys.exit(1)


COMMANDS: list[click.Command] = [
    prompts,
    configs,
    versions,
    promote,
    rollback,
    history,
    diff,
    render,
    complete,
    metrics,
    events,
    usage,
    audit,
    webhooks,
    sync,
    export_prompts,
]
