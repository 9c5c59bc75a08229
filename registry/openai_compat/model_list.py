"""``GET /v1/models``: the prompts and configs there are to call, a bounded page at a time.

OpenAI's ``models.list`` asks for no page and reads ``{"object": "list", "data": [...]}``;
that is what a caller gets who sends nothing, up to ``openai_models_page_size`` models. Past
it the answer says ``has_more`` and ``last_id``, and ``?after=<last_id>`` (with ``?limit=``)
reads on, as OpenAI's paged lists do. Prompts come first, then configs, each by name; a page
costs at most two queries of at most ``limit + 1`` rows.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from registry.configs.repository import ConfigRepository
from registry.lib.errors import FieldError, InvalidInputError
from registry.openai_compat.repository import CallableModelRepository
from registry.openai_compat.schemas import ModelList, ModelOut
from registry.openai_compat.service import OWNER, epoch_seconds
from registry.prompts.repository import PromptRepository

_KINDS = (("prompt", PromptRepository), ("config", ConfigRepository))
_MAX_NAME = 1000  # longer than any name; the rest is no position in this list


def list_position(after: str | None) -> tuple[int, str | None]:
    """Where a page starting after the model ``after`` begins: the index of its kind in ``_KINDS`` and the name.

    ``after`` is a model id this list gave (``prompt:NAME`` or ``config:NAME``); it need not exist any
    more, since the list is read by name from there.
    """
    if after is None:
        return 0, None
    kind, _, name = after.partition(":")
    for index, (known, _) in enumerate(_KINDS):
        if kind == known and name and len(name) <= _MAX_NAME and "\x00" not in name:
            return index, name
    raise InvalidInputError(
        "the request query is invalid",
        errors=[FieldError("after", "is not a model id of this list: send a last_id, 'prompt:NAME' or 'config:NAME'")],
    )


class ModelPages:
    def __init__(self, session: AsyncSession, *, max_limit: int) -> None:
        self.models = CallableModelRepository(session)
        self.max_limit = max_limit

    async def page(self, *, limit: int | None, after: str | None) -> ModelList:
        if limit is None:
            limit = self.max_limit
        elif not 1 <= limit <= self.max_limit:
            raise InvalidInputError(
                "the request query is invalid", errors=[FieldError("limit", f"must be from 1 to {self.max_limit}")]
            )
        start, name = list_position(after)
        data: list[ModelOut] = []
        has_more = False
        for kind, repository in _KINDS[start:]:
            rows = await self.models.in_production(repository, after=name, limit=limit - len(data) + 1)
            name = None
            data += [
                ModelOut(id=f"{kind}:{row_name}", created=epoch_seconds(created_at), owned_by=OWNER)
                for row_name, created_at in rows
            ]
            if len(data) > limit:
                has_more = True
                del data[limit:]
                break
        return ModelList(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )
