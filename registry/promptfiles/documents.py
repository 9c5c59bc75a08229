"""Prompt files: one YAML document per prompt, as people review them in pull requests.

A file ``prompts/support/summarize.yaml`` holds the prompt ``support/summarize``
(or the one its ``name:`` says)::

    description: Summarize a support ticket.
    tags: [support]
    kind: chat                       # text with `template`, chat with `messages`
    messages:
      - role: system
        content: |
          Summarize the ticket in at most {{ max_words }} words.
      - role: user
        content: "{{ ticket }}"
    input_schema:
      properties:
        ticket: {type: string}
        max_words: {type: integer, minimum: 5}
      required: [ticket, max_words]
    config: {name: small, version: 3}   # or {name: small, label: production}

The model config is a reference, never inline: configs are shared by many prompts
and carry backends and prices, so they are versioned on their own; a label is
resolved when syncing and the version it names is pinned, as the service does.
Parsing, checking, digesting and writing documents is pure; ``sync`` talks to the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from prompt_registry_client.templating import CHAT_ROLES, TemplateProblemError, compile_prompt

from registry.lib.hashing import content_sha256
from registry.lib.schema import NAME_PATTERN

SUFFIXES = (".yaml", ".yml")
KEYS = ("name", "description", "tags", "kind", "template", "messages", "input_schema", "config")
LABELS = ("production", "staging", "latest")
_NAME = re.compile(NAME_PATTERN)


class DocumentError(ValueError):
    """A prompt file that cannot be synced; ``problems`` says every reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("; ".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class ConfigRef:
    name: str
    version: int | None = None
    label: str | None = None

    def as_dict(self) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": self.name}
        if self.version is not None:
            ref["version"] = self.version
        if self.label is not None:
            ref["label"] = self.label
        return ref


@dataclass(frozen=True, slots=True)
class PromptDocument:
    """A prompt as a file describes it: its newest version's content, and its description and tags."""

    name: str
    kind: Literal["text", "chat"]
    template: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    input_schema: Mapping[str, Any] | None = None
    config: ConfigRef | None = None
    description: str = ""
    tags: tuple[str, ...] = field(default=())

    def content(self) -> dict[str, Any]:
        """The version's content as the service digests it (the config pinned to a version)."""
        assert self.config is None or self.config.version is not None, "resolve the config label first"
        return {
            "kind": self.kind,
            "template": self.template,
            "messages": [{"role": r, "content": c} for r, c in self.messages] if self.messages else None,
            "input_schema": dict(self.input_schema) if self.input_schema is not None else None,
            "config": None if self.config is None else {"name": self.config.name, "version": self.config.version},
        }

    def sha256(self) -> str:
        """Equal to the ``sha256`` the service gives a version with this content."""
        return content_sha256(self.content())

    def version_body(self, commit_message: str) -> dict[str, Any]:
        """The body of ``POST /v1/prompts/{name}/versions``."""
        body = {k: v for k, v in self.content().items() if v is not None}
        return {**body, "commit_message": commit_message}

    def with_config_version(self, version: int) -> PromptDocument:
        assert self.config is not None
        return replace(self, config=ConfigRef(self.config.name, version=version))

    def to_yaml(self, *, with_name: bool = False) -> str:
        """The file: block scalars for multi-line text, defaults left out, keys in a fixed order."""
        document: dict[str, Any] = {"name": self.name} if with_name else {}
        if self.description:
            document["description"] = self.description
        if self.tags:
            document["tags"] = list(self.tags)
        document["kind"] = self.kind
        if self.template is not None:
            document["template"] = self.template
        if self.messages is not None:
            document["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        if self.input_schema is not None:
            document["input_schema"] = dict(self.input_schema)
        if self.config is not None:
            document["config"] = self.config.as_dict()
        return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so templates read as they render (YAML quotes what a block cannot hold)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def name_of(path: Path, root: Path) -> str:
    """``root/support/summarize.yaml`` holds ``support/summarize``."""
    relative = path.relative_to(root).as_posix()
    return relative[: -len(path.suffix)]


def path_of(name: str, root: Path) -> Path:
    return root / f"{name}.yaml"


def parse_document(text: str, *, name: str, source: str) -> PromptDocument:
    """Read and check one file; every problem is reported at once (``DocumentError``)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DocumentError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise DocumentError(source, ["must be a mapping of fields (description, kind, template or messages, ...)"])
    problems = [f"unknown field '{key}' (known: {', '.join(KEYS)})" for key in raw if key not in KEYS]
    name = raw.get("name", name)
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 128:
        problems.append(f"'{name}' is not a prompt name: lowercase letters, digits, '-', '_', '.', '/' between folders")
    try:
        json.dumps(raw, allow_nan=False)
    except (TypeError, ValueError):
        problems.append("holds values JSON cannot (quote dates and times, write no .nan or .inf)")
    description = raw.get("description") or ""
    tags = raw.get("tags") or []
    if not isinstance(description, str):
        problems.append("description: must be text")
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        problems.append("tags: must be a list of text")
        tags = []
    template, messages = raw.get("template"), raw.get("messages")
    kind: Literal["text", "chat"] = "chat" if messages is not None else "text"
    if raw.get("kind") is not None:
        if raw["kind"] in ("text", "chat"):
            kind = raw["kind"]
        else:
            problems.append("kind: must be text or chat")
    problems += _content_problems(kind, template, messages)
    config = _config_ref(raw.get("config"), problems)
    schema = raw.get("input_schema")
    if schema is not None and not isinstance(schema, dict):
        problems.append("input_schema: must be a mapping")
    if problems:
        raise DocumentError(source, problems)
    document = PromptDocument(
        name=name,
        kind=kind,
        template=template,
        messages=tuple((m["role"], m["content"]) for m in messages) if messages is not None else None,
        input_schema=schema,
        config=config,
        description=description,
        tags=tuple(sorted(set(tags))),
    )
    _check_templates(document, source)
    return document


def _content_problems(kind: str, template: Any, messages: Any) -> list[str]:
    if kind == "text":
        problems = [] if isinstance(template, str) else ["template: a text prompt needs its template as text"]
        return problems + (["messages: only a chat prompt has messages"] if messages is not None else [])
    problems = ["template: only a text prompt has a template"] if template is not None else []
    if not isinstance(messages, list) or not messages:
        return [*problems, "messages: a chat prompt needs a list of messages"]
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and set(message) == {"role", "content"}):
            problems.append(f"messages[{index}]: needs exactly a role and a content")
        elif message["role"] not in CHAT_ROLES or not isinstance(message["content"], str):
            problems.append(f"messages[{index}]: role is one of {', '.join(sorted(CHAT_ROLES))}; content is text")
    return problems


def _config_ref(raw: Any, problems: list[str]) -> ConfigRef | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw, "label": "production"}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or set(raw) - {"name", "version", "label"}:
        problems.append(
            "config: a reference, {name, version} or {name, label}; model configs are versioned on their own"
        )
        return None
    version, label = raw.get("version"), raw.get("label")
    if (version is None) == (label is None):
        problems.append("config: give a version or a label")
    elif version is not None and not (isinstance(version, int) and version >= 1):
        problems.append("config.version: must be a version number")
    elif label is not None and label not in LABELS:
        problems.append(f"config.label: one of {', '.join(LABELS)}")
    return ConfigRef(raw["name"], version, label)


def _check_templates(document: PromptDocument, source: str) -> None:
    """Compile and analyse with the service's own code: a template it would refuse fails before anything is written."""
    try:
        compile_prompt(
            document.kind,
            template=document.template,
            messages=[{"role": r, "content": c} for r, c in document.messages] if document.messages else None,
            input_schema=document.input_schema,
            refuse_unsafe=True,
        )
    except TemplateProblemError as exc:
        raise DocumentError(source, [p.describe() for p in exc.problems]) from exc


def load_folder(root: Path) -> tuple[list[tuple[Path, PromptDocument]], list[str]]:
    """Every prompt file under ``root``, and every problem found in them (empty when all is well)."""
    found: list[tuple[Path, PromptDocument]] = []
    problems: list[str] = []
    if not root.is_dir():
        return [], [f"{root}: not a folder"]
    paths = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    for path in paths:
        try:
            found.append((path, parse_document(path.read_text(), name=name_of(path, root), source=str(path))))
        except DocumentError as exc:
            problems += [f"{exc.source}: {p}" for p in exc.problems]
    seen: dict[str, Path] = {}
    for path, document in found:
        if document.name in seen:
            problems.append(f"{path}: prompt '{document.name}' is also in {seen[document.name]}")
        seen[document.name] = path
    return found, problems


def document_of(resolved: Mapping[str, Any]) -> PromptDocument:
    """A prompt file's document from the service's resolve answer (``GET /v1/prompts/{name}``)."""
    version = resolved["version"]
    config = version.get("config")
    messages = version.get("messages")
    return PromptDocument(
        name=resolved["name"],
        kind=version["kind"],
        template=version.get("template"),
        messages=tuple((m["role"], m["content"]) for m in messages) if messages else None,
        input_schema=version.get("input_schema"),
        config=ConfigRef(config["name"], version=config["version"]) if config else None,
        description=resolved.get("description") or "",
        tags=tuple(sorted(resolved.get("tags") or ())),
    )
