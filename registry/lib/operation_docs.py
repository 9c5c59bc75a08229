"""What each operation of the API does, for the OpenAPI document, by ``operation_id``.

A handler may set its own ``description=`` (it wins); the others are described here, in one place,
so the schema says for every operation what it does and what a caller should know. The required
scope is not written here: ``registry.lib.openapi`` adds it from the scope the route's check reads.
``tests/lib/test_openapi_document.py`` fails when an operation has no description.
"""

from __future__ import annotations

from typing import Final

_LIST = "Paged: pass the `next_cursor` of one page as `cursor` to get the next."
_NAME = "A name containing `/` is sent with each `/` as `%2F` (`support%2Fsummarize`)."
_PROMOTE = (
    "`to` is `staging`, `production` or `archived`. For staging and production, `expected_current` is the "
    "version you believe holds the label now (`null` for none): another change in between answers 409 "
    "instead of being overwritten. Audited, with the optional `reason`."
)
_ROLLBACK = (
    "Puts `version` (default: the version production held before the current one) back in production. "
    "`reason` is required and audited; `expected_current` guards against a concurrent change (409)."
)
_CREATE_VERSION = (
    "Versions are immutable and numbered from 1. Sending the same content as the newest version creates "
    "nothing and answers 200 with it, so a deploy script can send its files every time."
)
_DIFF = "A unified diff of each field between versions `from` and `to`, plus the fields that changed."
_HISTORY = "Every promotion and rollback with who made it, when and why. " + _LIST

OPERATION_DESCRIPTIONS: Final[dict[str, str]] = {
    # system
    "health": "Liveness: 200 while the process runs. Checks no dependency; use `/ready` for that.",
    "problemType": (
        "The meaning of a problem `type` (`/problems/<type>`) that error answers carry, with its HTTP status; "
        "404 for a type this service does not use."
    ),
    # prompts
    "listPrompts": "Prompts by name, with their newest version and tags. `prefix` filters a folder "
    "(`support/`), `tag` one tag. " + _LIST,
    "createPrompt": "Creates an empty prompt (no version yet); add versions with `createPromptVersion`. "
    "Names may contain `/` to make folders. 409 if the name is taken.",
    "promptHistory": _HISTORY,
    "promotePromptVersion": _PROMOTE,
    "rollbackPrompt": _ROLLBACK,
    "listPromptVersions": "Versions newest first; `state` keeps only `draft`, `staging`, `production` or "
    "`archived` ones. " + _LIST,
    "createPromptVersion": "A text `template` or chat `messages` (Jinja2, sandboxed), an optional `input_schema` "
    "for the variables and the model `config` it runs with. Templates are checked when saved: a problem is a 422 "
    "naming the template and line. " + _CREATE_VERSION,
    "diffPromptVersions": _DIFF,
    "getPromptVersion": "One version by number, whatever its state.",
    "renderPrompt": "Renders the version a `label` (default `production`) or `version` names with `variables`, "
    "checked against the version's input schema first (422 naming each variable). Without a schema, printed "
    "variables take strings, numbers and booleans. With `unit`, a running experiment picks the variant.",
    "updatePrompt": "Changes the description, tags or `store_io` (whether completions keep their redacted "
    "input and output); versions are not touched. Fields left out stay as they are.",
    # configs
    "listConfigs": "Model configs by name, with their newest version and tags. `prefix` filters a folder, "
    "`tag` one tag. " + _LIST,
    "createConfig": "Creates an empty model config; add versions with `createConfigVersion`. 409 if the name is taken.",
    "configHistory": _HISTORY,
    "promoteConfigVersion": _PROMOTE,
    "rollbackConfig": _ROLLBACK,
    "listConfigVersions": "Versions newest first; `state` keeps only one state. " + _LIST,
    "createConfigVersion": "The `backend` (a name in the deployment's `REGISTRY_BACKENDS`), the `model` and "
    "its sampling `params`. " + _CREATE_VERSION,
    "diffConfigVersions": _DIFF,
    "getConfigVersion": "One version by number, whatever its state.",
    "resolveConfig": "The version a `label` (default `production`) or `version` names.",
    "updateConfig": "Changes the description or tags; versions are not touched.",
    # keys and audit
    "listApiKeys": "Keys with their scopes, limits and last use; never their secrets. Revoked keys are left out "
    "unless `include_revoked`. " + _LIST,
    "revokeApiKey": "The key stops working on every replica at once. Audited; it cannot be undone.",
    "listAudit": "Every change: who (`actor`), what (`action`, `resource_type`, `resource_name`), and the "
    "state before and after. Filter by actor or resource. " + _LIST,
    "getKeyBudget": "The key's monthly token and cost limits and what it spent this UTC calendar month.",
    "setKeyBudget": "Monthly limits for completions (UTC calendar month); `null` removes a limit. Over a "
    "limit, completions answer 429 `over_budget` until the month ends. Tokens at most 2,147,483,647.",
    # webhooks
    "listWebhooks": "Subscribed URLs with their event filters; never their signing secrets. " + _LIST,
    "getWebhook": "One webhook, without its signing secret.",
    "deleteWebhook": "Stops deliveries to the URL and deletes the webhook with its delivery log.",
    "listWebhookDeliveries": "Each delivery with its event, attempts, last status and next retry; `status` "
    "filters (`pending`, `retrying`, `succeeded`, `dead`). " + _LIST,
    "pingWebhook": "Queues a signed `ping` event to the URL, to check the receiver and its signature check. "
    "Follow it in `listWebhookDeliveries`.",
    # experiments
    "listExperiments": "Experiments newest first; filter by `status` or by the `prompt` they test. " + _LIST,
    "createExperiment": "A draft: the prompt, its variants (each a prompt version, optionally a config version) "
    "with weights, the primary and guardrail metrics, the unit attribute to hash and the analysis (correction, "
    "alpha, sequential, CUPED). Nothing is routed until `startExperiment`.",
    "exportExperimentUnits": "One row per exposed unit of a phase (variant, first exposure, each metric's value) "
    "as CSV or Parquet (`format`), streamed; `exposed_from`/`exposed_to` narrow the window. 409 before start.",
    "experimentResults": "Per variant and metric: units, mean and its interval (Wilson for proportions), the "
    "effect against the control with p-value and chance to win (GrowthBook's statistics), the sample ratio "
    "check and multiple-testing correction. 409 before the experiment started.",
    "startExperiment": "Begins phase 1: renders and completions with a `unit` are routed to variants by hash.",
    "stopExperiment": "Ends routing. With a `winner`, that variant's prompt version is promoted to production "
    "(audited, with `reason`).",
    # metrics, events and units
    "listMetrics": "Metric definitions. " + _LIST,
    "createMetric": "`key` and `kind` (`binomial`: did the event happen; `continuous`: a value), the "
    "`aggregation` of a unit's events, the better `direction`, and the event `source`. Events name the metric "
    "by `key`.",
    "getMetric": "One metric definition.",
    "updateMetric": "Changes the description; the definition itself is fixed, since results depend on it.",
    "getUnitData": "Every exposure and event recorded for a unit, e.g. to answer a data access request.",
    # completions
    "completionUsage": "Requests, errors, tokens, cost and latency per group (`group_by`: prompt, version, "
    "config, config_version, key, day, experiment, variant) over `since`..`until` (UTC). `day` is a date.",
    # the OpenAI-compatible door
    "createChatCompletion": "OpenAI's chat completion, for apps on an OpenAI SDK (`base_url` = this API). "
    "`model` is `prompt:NAME` (production; `@staging`, `@latest` or `@VERSION` for another) or `config:NAME` "
    "(the same suffixes). A prompt is rendered with `variables` (the SDKs send it through `extra_body`), "
    "an experiment routes by `unit` (else `user`), and `messages` follow the prompt's; for a config the "
    "messages go to its model as they are. Only `max_tokens` (lower than the config's), `seed` and `user` may be "
    "set; other sampling fields are refused (422) as the config sets them. The answer's `registry` field and "
    "`X-Registry-*` headers say which versions ran and the cost; a stream (`stream_options.include_usage` for "
    "usage) carries the cost in the chunk with the `finish_reason`, before the usage chunk. Errors are OpenAI's "
    "error object; its `type` is the problem type, and so is its `code` but for a model there is no version of "
    "(`model_not_found`, as OpenAI answers it), with the status the rest of the API answers it with.",
    "createCompletion": "OpenAI's text completion, as `createChatCompletion` for text prompts: the request's "
    "`prompt` follows the rendered text (or, for a `config:` model, is all of it).",
    "listModels": "The `prompt:` and `config:` models with a production version, in OpenAI's list shape.",
}

NAME_PARAMETER_DESCRIPTION: Final = f"The prompt or config name. {_NAME}"
