"""Structured logs: one JSON object per line, with the request id bound in context."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import structlog

from registry.settings import Settings

# Set per request by the request-context middleware; cheaper than binding structlog's context vars.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def error_text(exc: BaseException) -> str:
    """What a log line says of an exception: its message, else its type (a timeout's message is empty, and a
    line saying ``"error": ""`` tells an operator nothing)."""
    return str(exc) or type(exc).__name__


def add_request_id(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = request_id_var.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if settings.log_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; keep their noise out of our stream.
    logging.basicConfig(
        level=max(level, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )


class ServerLogFormatter(logging.Formatter):
    """The ASGI server's own lines (listening, workers, stopping) as JSON, like the service's: with
    ``REGISTRY_LOG_JSON`` stdout holds nothing else, so a log collector that parses JSON reads every line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "event": record.getMessage(),
            "logger": record.name.lstrip("_"),
            "level": record.levelname.lower(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def granian_log_config(settings: Settings) -> dict[str, Any] | None:
    """Granian's ``log_dictconfig``: its loggers write JSON lines to stdout (None keeps its plain lines)."""
    if not settings.log_json:
        return None
    handler = {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    return {
        "formatters": {"json": {"()": f"{__name__}.ServerLogFormatter"}},
        "handlers": {"console": handler, "access": handler},
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
