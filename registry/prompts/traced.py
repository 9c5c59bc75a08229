"""A render in a ``prompt.render`` span: shared by the render fast path and completions.

Apart from the fast path so that the completions (and the evaluations, which run them) need not import the
request checks the fast path sits behind.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Tracer

from registry.lib.tracing import RENDER_SPAN, Attributes, render_attributes
from registry.prompts.catalog import PromptCatalog, Rendering
from registry.prompts.schemas import RenderOut


def rendered_attributes(out: RenderOut) -> Attributes:
    experiment = out.experiment
    if experiment is None:
        return render_attributes(prompt=out.prompt, version=out.version)
    return render_attributes(
        prompt=out.prompt,
        version=out.version,
        experiment=experiment.key,
        phase=experiment.phase,
        variant=experiment.variant,
        in_experiment=experiment.in_experiment,
    )


async def traced_render(
    catalog: PromptCatalog,
    tracer: Tracer | None,
    name: str,
    variables: Any,
    *,
    label: str | None,
    version: int | None,
    unit: str | None,
) -> Rendering:
    """``catalog.render`` in a ``prompt.render`` span when tracing is on (for renders and completions alike).

    Off, it is the plain call: no span, no context manager, nothing else on the fast path.
    """
    if tracer is None:
        return await catalog.render(name, variables, label=label, version=version, unit=unit)
    with tracer.start_as_current_span(RENDER_SPAN) as span:
        rendering = await catalog.render(name, variables, label=label, version=version, unit=unit)
        span.set_attributes(rendered_attributes(rendering.out))
        return rendering
