"""Resolve and render, the two calls apps make on every request, served in front of Litestar.

Litestar's per-request work for a route (routing, a ``Request``, the signature
model that parses and validates kwargs, the ``before_request`` hook, the
response object) costs more CPU than resolving and rendering a cached prompt.
This ASGI layer serves the well-formed common case of those two routes
directly: it decodes the body or query with the same msgspec types, checks
the key with the same ``authorize``, and builds the response with the same
functions as the Litestar handlers below it.

Anything it does not fully understand (another path or method, a root path,
a body it cannot decode strictly, a repeated or percent-encoded query
parameter, an invalid Host header) is handed to Litestar untouched, body
included, so malformed requests get Litestar's validation errors. Once a
request is accepted here, errors raised while serving it (an unknown key or
prompt, invalid variables) are rendered as the same problem documents the
app's exception handler writes. ``REGISTRY_FAST_PATH=false`` turns it off;
``tests/prompts/test_fast_path.py`` checks that both paths answer alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry.trace import Tracer

from registry.auth.access import authorize, required_scope
from registry.auth.keys import Scope as KeyScope
from registry.lib.errors import FieldError, InvalidInputError
from registry.lib.front import front_routes, plain_request, problem_response, read_decoded
from registry.lib.http import JsonResponse, decode_name
from registry.lib.versioned_schemas import Label, VersionNumber
from registry.prompts.catalog import PromptCatalog, ResolvedVersion
from registry.prompts.schemas import ExperimentOut, LinkedConfig, RenderRequest, ResolvedPromptOut, UnitId
from registry.prompts.traced import traced_render
from registry.runtime import Runtime

STALE_HEADER = "X-Registry-Stale"
EXPERIMENT_HEADER = "X-Registry-Experiment"
RESOLVE_OPERATION = "resolvePrompt"
RENDER_OPERATION = "renderPrompt"
# Resolve bodies of versions run with a variant's config: (version's ETag, config's encoding) -> (body, ETag).
_VARIANT_BODIES: dict[tuple[str, bytes], tuple[bytes, str]] = {}
_MAX_VARIANT_BODIES = 256
_decode_render = msgspec.json.Decoder(RenderRequest).decode


# --------------------------------------------------------------------------- the responses of both paths


def label_or_version(label: str | None, version: int | None) -> None:
    if label is not None and version is not None:
        raise InvalidInputError(
            "give a label or a version, not both", errors=[FieldError("version", "cannot be combined with label")]
        )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def experiment_headers(experiment: ExperimentOut | None) -> dict[str, str]:
    """The experiment a unit was routed through, for the resolve response (its body is shared by all units)."""
    if experiment is None:
        return {}
    headers = {
        EXPERIMENT_HEADER: experiment.key,
        f"{EXPERIMENT_HEADER}-Phase": str(experiment.phase),
        "X-Registry-In-Experiment": "true" if experiment.in_experiment else "false",
    }
    if experiment.variant is not None:
        headers["X-Registry-Variant"] = experiment.variant
    return headers


async def resolve_response(
    catalog: PromptCatalog,
    name: str,
    *,
    label: str | None,
    version: int | None,
    unit: str | None,
    if_none_match: str | None,
) -> JsonResponse:
    label_or_version(label, version)
    resolution = await catalog.resolve(decode_name(name), label=label, version=version, unit=unit)
    body, etag = resolution.version.body, resolution.version.etag
    if resolution.config is not resolution.version.config:  # a variant runs the version with a config of its own
        body, etag = with_variant_config(resolution.version, resolution.config)
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",
        **experiment_headers(resolution.experiment),
    }
    if resolution.stale:
        headers[STALE_HEADER] = "true"
    if etag_matches(if_none_match, etag):
        return JsonResponse(b"", status=304, headers=headers)
    return JsonResponse(body, headers=headers)


def with_variant_config(version: ResolvedVersion, config: LinkedConfig | None) -> tuple[bytes, str]:
    """The version's resolve body and ETag naming the config a variant runs it with, as render and complete do.

    The version's stored body names its own config; its ETag differs from this one, so a copy cached
    for the version's own config is not revalidated (304) for a unit routed to the variant. Kept by the
    version's ETag (which changes with its body) and the config's encoding: a lookup costs about 1 us,
    rebuilding about 15 us.
    """
    key = (version.etag, msgspec.json.encode(config))
    found = _VARIANT_BODIES.get(key)
    if found is None:
        stored = msgspec.json.decode(version.body, type=ResolvedPromptOut)
        body = msgspec.json.encode(
            msgspec.structs.replace(stored, version=msgspec.structs.replace(stored.version, config=config))
        )
        if len(_VARIANT_BODIES) >= _MAX_VARIANT_BODIES:
            _VARIANT_BODIES.clear()
        found = _VARIANT_BODIES[key] = (body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return found


async def render_response(
    catalog: PromptCatalog, name: str, data: RenderRequest, *, tracer: Tracer | None = None
) -> JsonResponse:
    label_or_version(data.label, data.version)
    rendering = await traced_render(
        catalog, tracer, decode_name(name), data.variables, label=data.label, version=data.version, unit=data.unit
    )
    headers = {STALE_HEADER: "true"} if rendering.resolution.stale else None
    return JsonResponse(msgspec.json.encode(rendering.out), headers=headers)


# --------------------------------------------------------------------------- the ASGI layer


class ResolveQuery(msgspec.Struct):
    """The resolve route's query, with the constraints its Litestar handler declares (or tighter)."""

    label: Label | None = None
    version: VersionNumber | None = None
    unit: UnitId | None = None


_RESOLVE_QUERY_KEYS = frozenset(ResolveQuery.__struct_fields__)


def _resolve_query(query_string: bytes) -> ResolveQuery | None:
    """The query if it is plain (no escapes, no repeats, no blank values); None hands the request to Litestar."""
    if not query_string:
        return ResolveQuery()
    if b"%" in query_string or b"+" in query_string:
        return None
    values: dict[str, str] = {}
    for pair in query_string.decode("latin-1").split("&"):
        key, sep, value = pair.partition("=")
        if key not in _RESOLVE_QUERY_KEYS:
            continue  # Litestar ignores parameters a handler does not declare
        if not sep or not value or key in values:
            return None
        values[key] = value
    try:
        return msgspec.convert(values, ResolveQuery, strict=False)
    except msgspec.ValidationError:
        return None


class PromptFastPath:
    def __init__(
        self,
        app: ASGIApp,
        runtime: Runtime,
        *,
        prefix: str,
        resolve_template: str,
        render_template: str,
        resolve_scope: KeyScope,
        render_scope: KeyScope,
        max_body_bytes: int,
        tracer: Tracer | None = None,
    ) -> None:
        self.app = app
        self._runtime = runtime
        self._prefix = prefix  # "/v1/prompts/"
        self._resolve_template = resolve_template
        self._render_template = render_template
        self._resolve_scope = resolve_scope
        self._render_scope = render_scope
        self._max_body_bytes = max_body_bytes
        self._tracer = tracer  # None when tracing is off: no span is made here at all
        self.served = 0  # requests answered here; the rest went on to Litestar

    @classmethod
    def in_front_of(
        cls, litestar: Litestar, app: ASGIApp, runtime: Runtime, api_prefix: str, *, tracer: Tracer | None = None
    ) -> PromptFastPath:
        """Built from the Litestar routes it stands in for; refuses to start if they moved or changed shape."""
        prefix = f"{api_prefix}/prompts/"
        found = front_routes(
            litestar, {RESOLVE_OPERATION: f"{prefix}{{name:str}}", RENDER_OPERATION: f"{prefix}{{name:str}}/render"}
        )
        return cls(
            app,
            runtime,
            prefix=prefix,
            resolve_template=found[RESOLVE_OPERATION].template,
            render_template=found[RENDER_OPERATION].template,
            resolve_scope=required_scope(found[RESOLVE_OPERATION]),
            render_scope=required_scope(found[RENDER_OPERATION]),
            max_body_bytes=runtime.settings.max_body_bytes,
            tracer=tracer,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self._match(scope)
        if match is not None:
            is_render, name = match
            if not is_render:
                if await self._resolve(scope, name, receive, send):
                    return
            else:
                passed_on = await self._render(scope, name, receive, send)
                if passed_on is None:
                    return
                receive = passed_on
        await self.app(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[bool, str] | None:
        """(is it a render, the name segment) for the two routes served here, else None."""
        if scope["type"] != ScopeType.HTTP:
            return None
        path = scope["path"]
        if not path.startswith(self._prefix):
            return None
        name, slash, tail = path[len(self._prefix) :].partition("/")
        if not name:
            return None
        method = scope["method"]
        if method == "GET" and not slash:
            is_render = False
        elif method == "POST" and tail == "render":
            is_render = True
        else:
            return None  # before the Host check: completions and the other routes under the prefix skip it
        return (is_render, name) if plain_request(scope) else None

    async def _resolve(self, scope: Scope, name: str, receive: Receive, send: Send) -> bool:
        query = _resolve_query(scope["query_string"])
        if query is None:
            return False
        if_none_match = None
        for header, value in scope["headers"]:
            if header == b"if-none-match":
                if if_none_match is not None:
                    return False
                if_none_match = value.decode("latin-1")
        await self._answer(
            scope,
            receive,
            send,
            self._resolve_template,
            self._resolve_scope,
            lambda catalog: resolve_response(
                catalog, name, label=query.label, version=query.version, unit=query.unit, if_none_match=if_none_match
            ),
        )
        return True

    async def _render(self, scope: Scope, name: str, receive: Receive, send: Send) -> Receive | None:
        """Serve a render; or return the ``receive`` to hand the request to Litestar with, body unread."""
        data, handoff = await read_decoded(receive, self._max_body_bytes, _decode_render)
        if data is None:
            return handoff
        await self._answer(
            scope,
            receive,
            send,
            self._render_template,
            self._render_scope,
            lambda catalog: render_response(catalog, name, data, tracer=self._tracer),
        )
        return None

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        template: str,
        required: KeyScope,
        respond: Callable[[PromptCatalog], Awaitable[JsonResponse]],
    ) -> None:
        """Answer an accepted request: the key's check, then ``respond``; errors as the app's problem documents."""
        scope["path_template"] = template
        self.served += 1
        try:
            await authorize(self._runtime, scope["headers"], required)
            response = await respond(self._runtime.prompts)
        except Exception as exc:
            response = problem_response(exc, scope)
        await response(scope, receive, send)
