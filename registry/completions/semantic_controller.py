"""HTTP routes of a prompt's semantic cache: ``read`` to see the settings, ``promote`` to change them.

Changing them changes what production callers of the prompt are answered (a cached answer to a similar
request instead of the model's), without a new version: the same power as moving a prompt's production
label, so it takes the scope that moves labels rather than ``write``, which only drafts versions.
"""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.completions.schemas import SemanticCacheOut, SetSemanticCache
from registry.completions.semantic_settings import SemanticCacheSettingsService
from registry.deps import provide_resource_name
from registry.runtime import Runtime


def provide_semantic_cache_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> SemanticCacheSettingsService:
    return SemanticCacheSettingsService(db_session, backend_configured=runtime.completions.semantic.enabled)


class SemanticCacheController(Controller):
    path = "/prompts/{name:str}/semantic-cache"
    tags = ["completions"]
    dependencies = {
        "service": Provide(provide_semantic_cache_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @put(
        "/",
        opt={"scope": Scope.PROMOTE},
        operation_id="setPromptSemanticCache",
        summary="Turn a prompt's semantic cache on or off, with its threshold and exact variables",
        description="While enabled, a deterministic completion (temperature 0 or a seed) whose rendered request "
        "embeds within `threshold` (cosine similarity) of one already answered for the same prompt version, "
        'config version and values of `exact_variables` is answered from the cache with `cached: "semantic"` '
        "and the `similarity`. A new version never sees an older version's answers. Audited; takes effect on "
        "every replica at once.",
    )
    async def set_semantic_cache(
        self,
        resource_name: NamedDependency[str],
        data: JSONBody[SetSemanticCache],
        service: NamedDependency[SemanticCacheSettingsService],
        current_actor: NamedDependency[Actor],
    ) -> SemanticCacheOut:
        return await service.put(resource_name, data, current_actor)

    @get(
        "/",
        opt={"scope": Scope.READ},
        operation_id="getPromptSemanticCache",
        summary="A prompt's semantic cache settings",
        description="Off, at the default threshold and with no exact variables, until set.",
    )
    async def get_semantic_cache(
        self, resource_name: NamedDependency[str], service: NamedDependency[SemanticCacheSettingsService]
    ) -> SemanticCacheOut:
        return await service.get(resource_name)
