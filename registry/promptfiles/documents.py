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

Files are read as YAML 1.2 (``yes`` and ``on`` are text) and written back with ruamel.yaml's
round trip: exporting over a hand-written file changes only the values that differ and keeps
its comments, flow lists, quoting, indentation and long lines.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from prompt_registry_client.templating import CHAT_ROLES, TemplateProblemError, compile_prompt
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString, ScalarString

from registry.cli.output import size_problem
from registry.lib.hashing import content_sha256
from registry.lib.schema import NAME_PATTERN

SUFFIXES = (".yaml", ".yml")
KEYS = ("name", "description", "tags", "kind", "template", "messages", "input_schema", "config")
LABELS = ("production", "staging", "latest")
_NAME = re.compile(NAME_PATTERN)
_BLOCK_SCALAR = re.compile(r"(^|[:-]\s)[|>][-+0-9]*$")
# What a block or plain scalar cannot hold as it is: a reader turns CR and CRLF into LF (so every sync
# would see a change), and NEL, LS and PS break the line, leaving a file that is not YAML at all.
_BLOCK_UNSAFE = re.compile("[\r\x85\u2028\u2029]|[^\t\n\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A prompt file is a reviewed text, never a data dump: what the service takes in one request
# (``max_body_bytes``, 1 MiB by default) bounds it, and aliases may not multiply it past a bound
# (a "billion laughs" file of a few lines expands to 10^9 values when it is digested).
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 64


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
        """A new file: ``|`` blocks for multi-line text, tags as a flow list, defaults left out, keys in order."""
        document = CommentedMap({"name": self.name} if with_name else {})
        if self.description:
            document["description"] = _text(self.description)
        if self.tags:
            document["tags"] = _flow(list(self.tags))
        document["kind"] = self.kind
        if self.template is not None:
            document["template"] = _text(self.template)
        if self.messages is not None:
            document["messages"] = [CommentedMap(role=r, content=_text(c)) for r, c in self.messages]
        if self.input_schema is not None:
            document["input_schema"] = dict(self.input_schema)
        if self.config is not None:
            document["config"] = _flow(self.config.as_dict())
        return _dump(document, Layout())

    def rewrite(self, text: str) -> str:
        """``text``, a file of this prompt, changed to hold this document: only the values that differ change.

        Comments, flow or block style, quoting and line layout stay as they are; a config reference
        stays a label where this document's config is one. ``text`` comes back unchanged (the same
        string) when the file already says what this document says.
        """
        layout = Layout.of(text)
        file = _round_trip(layout).load(text)
        if not isinstance(file, CommentedMap):
            return self.to_yaml()
        changed = _set_text(file, "description", self.description, drop_empty=True)
        changed |= _set_tags(file, self.tags)
        if "kind" in file and file["kind"] != self.kind:
            file["kind"] = self.kind
            changed = True
        content, other = ("template", "messages") if self.kind == "text" else ("messages", "template")
        if content not in file:
            file.insert(list(file).index(other) if other in file else len(file), content, None)
        if other in file:
            del file[other]
            changed = True
        if self.template is not None:
            changed |= _set_text(file, "template", self.template)
        if self.messages is not None:
            changed |= _merge(file, "messages", [{"role": r, "content": c} for r, c in self.messages])
        changed |= _merge(file, "input_schema", None if self.input_schema is None else dict(self.input_schema))
        changed |= _set_config(file, self.config)
        return _dump(file, layout) if changed else text


@dataclass(frozen=True, slots=True)
class Layout:
    """How a file indents: a mapping's keys, a sequence's items, and the dash inside the item's indent."""

    mapping: int = 2
    sequence: int = 4
    offset: int = 2

    @classmethod
    def of(cls, text: str) -> Layout:
        """The indentation the file's own nested blocks use (the defaults where it has none)."""
        mapping = sequence = offset = None
        opener: int | None = None  # the indent of a line that opens a nested block (``key:``)
        scalar: int | None = None  # the indent of a line that opens a block scalar, whose text is skipped
        for line in text.splitlines():
            stripped = line.strip()
            indent = len(line) - len(line.lstrip(" "))
            if not stripped or (scalar is not None and indent > scalar) or stripped.startswith("#"):
                continue
            scalar = None
            if opener is not None and stripped.startswith("- ") and offset is None:
                offset = indent - opener
                sequence = offset + 2 + len(stripped[2:]) - len(stripped[2:].lstrip(" "))
            elif opener is not None and indent > opener and mapping is None:
                mapping = indent - opener
            value = stripped.split(" #")[0].rstrip()
            opener = indent if value.endswith(":") else None
            if _BLOCK_SCALAR.search(value):
                scalar = indent
        default = cls()
        offset = default.offset if offset is None else offset
        return cls(mapping or default.mapping, sequence or default.sequence, offset)


def _round_trip(layout: Layout) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never wrap: a long line stays one line
    yaml.indent(mapping=layout.mapping, sequence=layout.sequence, offset=layout.offset)
    return yaml


def _dump(document: Any, layout: Layout) -> str:
    out = io.StringIO()
    _round_trip(layout).dump(document, out)
    return out.getvalue()


def _text(value: str, like: Any = None) -> str:
    """``value`` written as ``like`` was (literal, folded, quoted); multi-line text otherwise as a ``|`` block."""
    if _BLOCK_UNSAFE.search(value):
        escaped: str = DoubleQuotedScalarString(value)  # so the file reads back as this text
        return escaped
    if isinstance(like, ScalarString):
        styled: str = type(like)(value)
        return styled
    return LiteralScalarString(value) if "\n" in value else value


def _flow(value: Any) -> Any:
    node = CommentedMap(value) if isinstance(value, dict) else CommentedSeq(value)
    node.fa.set_flow_style()
    return node


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: ``1`` is not ``true``, a float is not an int."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _set_text(node: CommentedMap, key: str, value: str, *, drop_empty: bool = False) -> bool:
    old = node.get(key)
    if drop_empty and not value:
        if key in node and old:
            del node[key]
            return True
        return False
    if isinstance(old, str) and old == value:
        return False
    if key in node:
        node[key] = _text(value, old)
    else:
        node.insert(1 if next(iter(node), None) == "name" else 0, key, _text(value))
    return True


def _set_tags(node: CommentedMap, tags: tuple[str, ...]) -> bool:
    old = node.get("tags") or []
    if isinstance(old, list) and sorted(set(old)) == list(tags):
        return False
    if not tags:
        del node["tags"]
        return True
    kept = [t for t in dict.fromkeys(old) if t in tags] if isinstance(old, list) else []
    new = kept + [t for t in tags if t not in kept]
    if isinstance(old, CommentedSeq):
        old[:] = new
    elif "tags" in node:
        node["tags"] = _flow(new)
    else:
        node.insert(list(node).index("description") + 1 if "description" in node else 0, "tags", _flow(new))
    return True


def _merge(node: Any, key: Any, value: Any) -> bool:
    """Set ``node[key]`` to ``value``, changing only what differs below it; False when nothing did."""
    present = key in node if isinstance(node, dict) else key < len(node)
    old = node[key] if present else None
    if (present and _same(old, value)) or (not present and value is None):
        return False
    if value is None:
        del node[key]
    elif isinstance(old, dict) and isinstance(value, dict):
        for gone in [k for k in old if k not in value]:
            del old[gone]
        for k, v in value.items():
            _merge(old, k, v)
    elif isinstance(old, list) and isinstance(value, list):
        del old[len(value) :]
        for index, item in enumerate(value):
            if index < len(old):
                _merge(old, index, item)
            else:
                old.append(_styled(item, old[-1] if old else None))
    else:
        node[key] = _styled(value, old)
    return True


def _styled(value: Any, like: Any = None) -> Any:
    """``value`` as new YAML in the style of ``like`` (its neighbour or predecessor): flow or block, ``|``, quotes."""
    if isinstance(value, str):
        return _text(value, like)
    if isinstance(value, dict):
        node: CommentedMap | CommentedSeq = CommentedMap({k: _styled(v) for k, v in value.items()})
    elif isinstance(value, list):
        node = CommentedSeq([_styled(v) for v in value])
    else:
        return value
    if isinstance(like, CommentedMap | CommentedSeq) and like.fa.flow_style():
        node.fa.set_flow_style()
    return node


def _set_config(node: CommentedMap, config: ConfigRef | None) -> bool:
    old = node.get("config")
    if config is None:
        if "config" in node:
            del node["config"]
            return True
        return False
    if old is not None and _config_ref(old, []) == config:
        return False
    if isinstance(old, CommentedMap):
        old.pop("version" if config.version is None else "label", None)
        _merge(node, "config", config.as_dict())
    else:
        node["config"] = _flow(config.as_dict())
    return True


def name_of(path: Path, root: Path) -> str:
    """``root/support/summarize.yaml`` holds ``support/summarize``."""
    relative = path.relative_to(root).as_posix()
    return relative[: -len(path.suffix)]


def path_of(name: str, root: Path) -> Path:
    return root / f"{name}.yaml"


def is_name(name: str) -> bool:
    """Whether ``name`` is a resource name, so its file lies below the folder (no '..', no leading '/')."""
    return len(name) <= 128 and _NAME.match(name) is not None


def hidden(path: Path, root: Path) -> bool:
    """Whether a file or a folder above it (below ``root``) is hidden: ``.github/workflows/ci.yml``, macOS's
    ``._greet.yaml`` beside each file copied to another disk or archived. No prompt name starts with '.', so such
    a file is never a prompt file, and reading it would refuse the whole sync."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, lies below ``root``: a link in the folder may not lead a sync
    to read, or an export to write, a file elsewhere (a key, a shell profile)."""
    return path.resolve().is_relative_to(root.resolve())


def parse_document(text: str, *, name: str, source: str) -> PromptDocument:
    """Read and check one file; every problem is reported at once (``DocumentError``)."""
    if len(text) > MAX_FILE_BYTES:
        raise DocumentError(source, [f"larger than {MAX_FILE_BYTES} characters; a prompt file holds one prompt"])
    try:
        raw = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise DocumentError(source, [f"not valid YAML: {exc}"]) from exc
    except RecursionError as exc:
        raise DocumentError(source, [f"nested deeper than {MAX_DEPTH} levels"]) from exc
    too_large = size_problem(raw, max_values=MAX_VALUES, max_depth=MAX_DEPTH)
    if too_large:
        raise DocumentError(source, [too_large])
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
    """Every prompt file under ``root`` (hidden ones left out), and every problem found in them (empty when all is
    well)."""
    found: list[tuple[Path, PromptDocument]] = []
    problems: list[str] = []
    if not root.is_dir():
        return [], [f"{root}: not a folder"]
    paths = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file() and not hidden(p, root))
    for path in paths:
        if not inside(path, root):
            problems.append(f"{path}: a link to a file outside {root}, not read")
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{path}: larger than {MAX_FILE_BYTES} bytes; a prompt file holds one prompt")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot be read as UTF-8 text ({exc})")
            continue
        try:
            found.append((path, parse_document(text, name=name_of(path, root), source=str(path))))
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
