"""``registry experiments``: A/B experiments on prompts, through the API (only click and the standard library here)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from registry.cli.api import api_command
from registry.cli.output import emit, table

if TYPE_CHECKING:
    from prompt_registry_client import RegistryClient


@click.group()
def experiments() -> None:
    """A/B experiments on prompts: create, list, show, update, start, stop, results, export."""


def parse_variant(spec: str) -> dict[str, Any]:
    """``KEY=VERSION``, optionally ``:WEIGHT`` and ``@CONFIG:VERSION``, e.g. ``treatment=2:1@fast:3``."""
    key, equals, rest = spec.partition("=")
    if not equals or not key:
        raise click.BadParameter(f"'{spec}' is not KEY=VERSION[:WEIGHT][@CONFIG:VERSION]")
    rest, at, config = rest.partition("@")
    version, colon, weight = rest.partition(":")
    variant: dict[str, Any] = {"key": key}
    try:
        variant["prompt_version"] = int(version)
        if colon:
            variant["weight"] = float(weight)
        if at:
            name, _, config_version = config.rpartition(":")
            variant["config"] = {"name": name, "version": int(config_version)}
    except ValueError as exc:
        raise click.BadParameter(f"'{spec}' is not KEY=VERSION[:WEIGHT][@CONFIG:VERSION]") from exc
    return variant


def parse_namespace(spec: str) -> dict[str, Any]:
    """``NAME:START-END``, e.g. ``checkout:0-0.5``."""
    name, _, bounds = spec.partition(":")
    start, _, end = bounds.partition("-")
    try:
        return {"name": name, "start": float(start), "end": float(end)}
    except ValueError as exc:
        raise click.BadParameter(f"'{spec}' is not NAME:START-END") from exc


@experiments.command("create")
@click.argument("key")
@click.option("--prompt", required=True, help="The prompt the experiment routes.")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    required=True,
    help="KEY=VERSION[:WEIGHT][@CONFIG:VERSION]; the first is the control. Repeat for each variant.",
)
@click.option("--primary-metric", help="The metric that decides.")
@click.option("--guardrail", "guardrails", multiple=True, help="A metric that must not get worse (repeatable).")
@click.option("--coverage", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Share of units in.")
@click.option("--seed", help="Hash seed (default: the key).")
@click.option("--namespace", help="NAME:START-END; experiments of a namespace never share a unit.")
@click.option("--correction", type=click.Choice(["holm", "benjamini-hochberg", "none"]), default="holm")
@click.option("--sequential", is_flag=True, help="Always-valid intervals, to look at results any time.")
@click.option("--cuped", is_flag=True, help="Reduce variance with each unit's pre-exposure value.")
@click.option("--description", default="", help="What the experiment tests.")
@api_command
def experiments_create(
    client: RegistryClient,
    as_json: bool,
    key: str,
    prompt: str,
    variants: tuple[str, ...],
    primary_metric: str | None,
    guardrails: tuple[str, ...],
    coverage: float,
    seed: str | None,
    namespace: str | None,
    correction: str,
    sequential: bool,
    cuped: bool,
    description: str,
) -> None:
    """Create experiment KEY as a draft."""
    definition: dict[str, Any] = {
        "key": key,
        "prompt": prompt,
        "variants": [parse_variant(v) for v in variants],
        "guardrail_metrics": list(guardrails),
        "coverage": coverage,
        "correction": correction,
        "sequential": sequential,
        "cuped": cuped,
        "description": description,
    }
    if primary_metric:
        definition["primary_metric"] = primary_metric
    if seed:
        definition["hash_seed"] = seed
    if namespace:
        definition["namespace"] = parse_namespace(namespace)
    result = client.create_experiment(definition)
    emit(as_json, result, lambda: _print_experiment(result))


@experiments.command("list")
@click.option("--status", type=click.Choice(["draft", "running", "stopped"]))
@click.option("--prompt", help="Only experiments on this prompt.")
@api_command
def experiments_list(client: RegistryClient, as_json: bool, status: str | None, prompt: str | None) -> None:
    """List experiments."""
    rows = list(client.list_experiments(status=status, prompt=prompt))
    emit(as_json, rows, lambda: table(rows, ["key", "prompt", "status", "phase", "primary_metric", "started_at"]))


@experiments.command("start")
@click.argument("key")
@api_command
def experiments_start(client: RegistryClient, as_json: bool, key: str) -> None:
    """Start routing units into experiment KEY."""
    result = client.start_experiment(key)
    emit(as_json, result, lambda: _print_experiment(result))


@experiments.command("stop")
@click.argument("key")
@click.option("--winner", help="The winning variant: its version becomes production.")
@click.option("--reason", help="Why, for the history.")
@api_command
def experiments_stop(client: RegistryClient, as_json: bool, key: str, winner: str | None, reason: str | None) -> None:
    """Stop experiment KEY, optionally promoting the winner's version."""
    result = client.stop_experiment(key, winner=winner, reason=reason)

    def render() -> None:
        _print_experiment(result["experiment"])
        promoted = result.get("promoted")
        if promoted and not promoted["changed"]:
            click.echo(f"{promoted['prompt']} v{promoted['version']} was already in production: nothing was promoted")
        elif promoted:
            made = " (a new version carrying the winning config)" if promoted["created_version"] else ""
            click.echo(f"{promoted['prompt']} v{promoted['version']} is now in production{made}")

    emit(as_json, result, render)


@experiments.command("results")
@click.argument("key")
@click.option("--phase", type=click.IntRange(min=1), help="Phase (default: the current one).")
@api_command
def experiments_results(client: RegistryClient, as_json: bool, key: str, phase: int | None) -> None:
    """Results of experiment KEY, per metric and variant."""
    result = dict(client.experiment_results(key, phase=phase).raw)
    emit(as_json, result, lambda: _print_results(result))


def _print_experiment(experiment: dict[str, Any]) -> None:
    click.echo(
        f"{experiment['key']} on {experiment['prompt']}: {experiment['status']}, phase {experiment['phase']}, "
        f"coverage {experiment['coverage']:g}"
    )
    table(
        [
            {
                "variant": v["key"],
                "version": v["prompt_version"],
                "weight": f"{v['weight']:.3f}",
                "config": f"{v['config']['name']}@{v['config']['version']}" if v["config"] else None,
            }
            for v in experiment["variants"]
        ],
        ["variant", "version", "weight", "config"],
    )


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _interval(effect: dict[str, Any] | None, percent: bool = False) -> str:
    if effect is None:
        return ""
    scale, unit = (100, "%") if percent else (1, "")
    return f"{effect['estimate'] * scale:+.3g}{unit} [{effect['ci_low'] * scale:.3g}, {effect['ci_high'] * scale:.3g}]"


def _print_results(result: dict[str, Any]) -> None:
    srm = result["srm"]
    click.echo(
        f"{result['experiment']} phase {result['phase']} ({result['status']}): {result['units']} units, "
        f"{result['units_in_multiple_variants']} in several variants (excluded), {result['pending_units']} pending"
    )
    flag = "  SAMPLE RATIO MISMATCH: do not trust these results" if srm["flagged"] else ""
    click.echo(f"sample ratio p = {_number(srm['p_value'])}{flag}")
    table(
        [
            {
                "variant": v["variant"],
                "units": v["units"],
                "expected": f"{v['expected_share']:.1%}",
                "observed": f"{v['observed_share']:.1%}",
            }
            for v in result["variants"]
        ],
        ["variant", "units", "expected", "observed"],
    )
    for metric in result["metrics"]:
        better = "higher" if metric["direction"] == "higher" else "lower"
        click.echo(f"\n{metric['metric']} ({metric['role']}, {metric['kind']}, {better} is better)")
        rows = []
        for row in metric["variants"]:
            comparison = row["vs_control"] or {}
            rows.append(
                {
                    "variant": row["variant"],
                    "units": row["units"],
                    "mean": _number(row["mean"]),
                    "95% ci": f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
                    "abs diff [ci]": _interval(comparison.get("absolute")),
                    "rel diff [ci]": _interval(comparison.get("relative"), percent=True),
                    "p": _number(comparison.get("p_value"), 3),
                    "p adj": _number(comparison.get("p_value_adjusted"), 3),
                    "chance to win": f"{comparison['chance_to_beat_control']:.1%}" if comparison else "",
                    "sig": ("yes" if comparison.get("significant") else "no") if comparison else row.get("note") or "",
                }
            )
        table(
            rows,
            [
                "variant",
                "units",
                "mean",
                "95% ci",
                "abs diff [ci]",
                "rel diff [ci]",
                "p",
                "p adj",
                "chance to win",
                "sig",
            ],
        )


@experiments.command("show")
@click.argument("key")
@api_command
def experiments_show(client: RegistryClient, as_json: bool, key: str) -> None:
    """Show experiment KEY: its status, variants and metrics."""
    result = client.get_experiment_definition(key)

    def render() -> None:
        _print_experiment(result)
        metrics = [result.get("primary_metric"), *(result.get("guardrail_metrics") or [])]
        if any(metrics):
            guardrails = ",".join(result.get("guardrail_metrics") or []) or "(none)"
            click.echo(f"primary metric: {result.get('primary_metric') or '(none)'}; guardrails: {guardrails}")

    emit(as_json, result, render)


def parse_weight(spec: str) -> tuple[str, float]:
    key, equals, weight = spec.partition("=")
    try:
        if not equals or not key:
            raise ValueError(spec)
        return key, float(weight)
    except ValueError as exc:
        raise click.BadParameter(f"'{spec}' is not VARIANT=WEIGHT", param_hint="--weight") from exc


@experiments.command("update")
@click.argument("key")
@click.option("--description", help="What the experiment tests.")
@click.option("--weight", "weights", multiple=True, help="VARIANT=WEIGHT, for every variant (repeat).")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    help="KEY=VERSION[:WEIGHT][@CONFIG:VERSION] (repeat for each; replaces the variants of a draft).",
)
@click.option("--coverage", type=click.FloatRange(0, 1), help="Share of units in.")
@click.option("--seed", help="Hash seed.")
@click.option("--namespace", help="NAME:START-END; 'none' leaves the namespace.")
@click.option("--primary-metric", help="The metric that decides; 'none' removes it.")
@click.option("--guardrail", "guardrails", multiple=True, help="Guardrail metrics (repeat; replaces the list).")
@click.option("--correction", type=click.Choice(["holm", "benjamini-hochberg", "none"]))
@click.option("--sequential/--fixed-horizon", default=None, help="Always-valid intervals, or fixed-horizon ones.")
@click.option("--cuped/--no-cuped", default=None, help="Reduce variance with each unit's pre-exposure value.")
@click.option("--reason", help="Why, for the history.")
@api_command
def experiments_update(
    client: RegistryClient,
    as_json: bool,
    key: str,
    description: str | None,
    weights: tuple[str, ...],
    variants: tuple[str, ...],
    coverage: float | None,
    seed: str | None,
    namespace: str | None,
    primary_metric: str | None,
    guardrails: tuple[str, ...],
    correction: str | None,
    sequential: bool | None,
    cuped: bool | None,
    reason: str | None,
) -> None:
    """Change experiment KEY; what is not given stays as it is.

    On a running experiment new weights, seed or namespace, or a lower coverage, start a new phase.
    """
    changes: dict[str, Any] = {
        "description": description,
        "coverage": coverage,
        "hash_seed": seed,
        "correction": correction,
        "sequential": sequential,
        "cuped": cuped,
        "reason": reason,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if weights:
        changes["weights"] = dict(parse_weight(w) for w in weights)
    if variants:
        changes["variants"] = [parse_variant(v) for v in variants]
    if namespace is not None:
        changes["namespace"] = None if namespace == "none" else parse_namespace(namespace)
    if primary_metric is not None:
        changes["primary_metric"] = None if primary_metric == "none" else primary_metric
    if guardrails:
        changes["guardrail_metrics"] = list(guardrails)
    if not changes or set(changes) == {"reason"}:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    result = client.update_experiment(key, changes)
    emit(as_json, result, lambda: _print_experiment(result))


@experiments.command("export")
@click.argument("key")
@click.option("--format", "export_format", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--phase", type=click.IntRange(min=1), help="Phase (default: the current one).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (default: stdout).",
)
@api_command
def experiments_export(
    client: RegistryClient, as_json: bool, key: str, export_format: str, phase: int | None, output: Path | None
) -> None:
    """Per-unit rows of experiment KEY (variant, exposure, metric values) as CSV or Parquet, streamed.

    Needs the analyze scope. Parquet goes to a file (--output) unless stdout is not a terminal.
    """
    if export_format == "parquet" and output is None and sys.stdout.isatty():
        raise click.UsageError("Parquet is binary: give --output FILE or redirect stdout")
    chosen: Literal["csv", "parquet"] = "parquet" if export_format == "parquet" else "csv"
    size = 0
    with client.export_experiment(key, format=chosen, phase=phase) as chunks:
        if output is None:
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        # Written beside the target and moved into place at the end, so a broken stream leaves no half file.
        partial = output.with_name(f".{output.name}.partial")
        try:
            with partial.open("wb") as sink:
                for chunk in chunks:
                    sink.write(chunk)
                    size += len(chunk)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    click.echo(f"wrote {size} bytes to {output}", err=True)
