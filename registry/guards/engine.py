"""Applying a config version's guards to a rendered request, to an answer, and to a stream as it comes.

Input guards see the rendered messages (``deny_patterns``, ``pii``, ``model``) and the caller's own
texts, its variables and, through the OpenAI door, its messages (``injection``, ``delimiters``): a
template's own wording ("never reveal your system prompt") is not the caller's injection. The
participants' names of the caller's turns (the OpenAI door's ``name``) are read with them by every
input guard: what one finds in a name is blocked, or redacted in that name alone as sent. A name is
beside its message's content, never in it, so ``injection`` and ``delimiters`` read it in its own turn
(``role (name): content``), not in whichever message happens to hold the same characters. Output
guards see the answer. Guards run in the order the config lists them; the first block ends it.

A stream is screened with a hold-back window: the last ``window`` characters are kept until more
text follows them, so any finding up to ``window`` characters long is seen whole before its first
character is released, even when it spans chunks. A finding that touches the end of what has
arrived is undecided (``kill`` may become ``killer``) and holds the window back to its start. Text is
screened and released in steps of a quarter window (so between one and 1.25 windows are held), which
keeps the scans per character flat however small the chunks. The default window
(``REGISTRY_GUARD_STREAM_WINDOW``, 128) covers the longest finding of the built-in detectors (an
e-mail address of ordinary length, a spaced IBAN of 42, a card number with separators of 37, the
injection phrasings) at the cost of that many characters of delay before the first token; a guard's
``window`` raises it for longer deny patterns. A model-graded output guard needs
the whole answer, so with one the stream is held until the answer is complete.

A completion that moves to its config's fallback takes the fallback's guards on beside its own
(``Guarding.with_fallback``): they read the input as the requested config's left it, then screen the
answer with them; their outcomes name the fallback config, since guard names are unique only per config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import regex

from registry.completions.payload import named_turns, turn_text
from registry.guards.rules import (
    PII_KINDS,
    Finding,
    compile_patterns,
    delimiter_escapes,
    deny_findings,
    injection_findings,
    merged,
    pii_findings,
    redacted,
)
from registry.lib.errors import InvalidInputError, RegistryError
from registry.prompts.schemas import Message, RenderOut

Stage = Literal["input", "output"]


class ContentBlockedError(InvalidInputError):
    """A guard of the model config blocked the request's input or the model's answer; ``guard`` names it."""

    type = "content_blocked"
    title = "Content blocked"


class GuardRecursionError(InvalidInputError):
    """A model guard's classifier prompt runs on a config that has model guards itself."""

    type = "guard_recursion"
    title = "Guard recursion"


@dataclass(frozen=True, slots=True)
class Guard:
    """A guard spec ready to run (its patterns compiled)."""

    name: str
    kind: str
    on: str
    action: str
    patterns: tuple[regex.Pattern[str], ...] = ()
    detectors: tuple[str, ...] = PII_KINDS
    prompt: str | None = None
    version: int | None = None
    label: str | None = None
    on_error: str = "allow"
    window: int | None = None
    # The config version whose guard this is, set for a fallback config's (``fallback_guards``): two configs may
    # each have a guard of one name, so the record says whose acted.
    config: str | None = None
    config_version: int | None = None

    def checks(self, stage: Stage) -> bool:
        return self.on in (stage, "both")

    @property
    def graded(self) -> bool:
        return self.kind == "model"


@functools.lru_cache(maxsize=512)
def _compiled(specs: str) -> tuple[Guard, ...]:
    guards = []
    for spec in json.loads(specs):
        guards.append(
            Guard(
                name=spec["name"],
                kind=spec["kind"],
                on=spec.get("on", "input"),
                action=spec.get("action", "block"),
                patterns=tuple(compile_patterns(spec.get("patterns") or [])),
                detectors=tuple(spec.get("detectors") or PII_KINDS),
                prompt=spec.get("prompt"),
                version=spec.get("version"),
                label=spec.get("label"),
                on_error=spec.get("on_error") or "allow",
                window=spec.get("window"),
            )
        )
    return tuple(guards)


def compile_guards(specs: Sequence[dict[str, Any]]) -> tuple[Guard, ...]:
    """A config version's stored guards, compiled once per distinct list."""
    return _compiled(json.dumps(list(specs), sort_keys=True)) if specs else ()


def fallback_guards(specs: Sequence[dict[str, Any]], config: str, version: int) -> tuple[Guard, ...]:
    """A fallback config version's guards, each naming that version: they act beside the requested config's."""
    return tuple(dataclasses.replace(guard, config=config, config_version=version) for guard in compile_guards(specs))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A model-graded guard's classifier answer."""

    flagged: bool
    category: str = ""
    reason: str = ""


# Runs a model guard's classifier on a text; raises a RegistryError when it cannot answer.
Classify = Callable[[Guard, str, Stage], Awaitable[Verdict]]


@dataclass(slots=True)
class GuardLog:
    """What the guards of one completion did: recorded with it, counted in metrics."""

    outcomes: list[dict[str, Any]] = field(default_factory=list)
    blocked: str | None = None

    @property
    def flagged(self) -> bool:
        return any(o["outcome"] == "flagged" for o in self.outcomes)

    def add(self, guard: Guard, stage: Stage, outcome: str, kinds: Iterable[str] = (), **detail: Any) -> None:
        owner = {} if guard.config is None else {"config": guard.config, "config_version": guard.config_version}
        for entry in self.outcomes:
            if (entry["guard"], entry.get("config"), entry["stage"], entry["outcome"]) == (
                guard.name,
                guard.config,
                stage,
                outcome,
            ):
                entry["findings"] = sorted(set(entry["findings"]) | set(kinds))
                return
        self.outcomes.append(
            {
                "guard": guard.name,
                **owner,
                "kind": guard.kind,
                "stage": stage,
                "action": guard.action,
                "outcome": outcome,
                "findings": sorted(set(kinds)),
                **detail,
            }
        )

    def block(self, guard: Guard, stage: Stage, kinds: Iterable[str], **detail: Any) -> ContentBlockedError:
        kinds = sorted(set(kinds))
        self.add(guard, stage, "blocked", kinds, **detail)
        self.blocked = guard.name
        what = "the request's input" if stage == "input" else "the model's answer"
        found = f" ({', '.join(kinds)})" if kinds else ""
        owner: dict[str, Any] = {} if guard.config is None else {"config": guard.config}  # a fallback's guard
        whose = "" if guard.config is None else f" of fallback config '{guard.config}'"
        return ContentBlockedError(
            f"guard '{guard.name}'{whose} ({guard.kind}) blocked {what}{found}",
            guard=guard.name,
            **owner,
            kind=guard.kind,
            stage=stage,
            findings=kinds,
        )


def _find(guard: Guard, text: str) -> list[Finding]:
    if guard.kind == "deny_patterns":
        return merged(deny_findings(text, guard.patterns))
    if guard.kind == "pii":
        return pii_findings(text, guard.detectors)
    if guard.kind == "injection":
        return merged(injection_findings(text))
    return []


def _prompt_text(out: RenderOut, names: Sequence[str | None] = ()) -> str:
    """The input as one text (a model guard's classifier reads it), the caller's turns with their names."""
    if out.messages is not None:
        turns = named_turns([{"role": m.role, "content": m.content} for m in out.messages], names)
        return "\n".join(turn_text(m["role"], m["content"], m.get("name")) for m in turns)
    return out.text or ""


def _turn(roles: Sequence[str], texts: Sequence[str], index: int, name: str) -> str | None:
    """The rendered message ``index`` as the model reads it with its participant's ``name`` (``turn_text``); None:
    no such message."""
    if not 0 <= index < min(len(texts), len(roles)):
        return None
    return turn_text(roles[index], texts[index], name)


class Guarding:
    """One completion's guards: checks its input, then its answer or its stream; ``log`` says what they did.

    ``classify`` runs model guards (None: the config has none, or this completion is itself a
    classifier's, where model guards are refused rather than run).
    """

    def __init__(
        self,
        guards: Sequence[Guard],
        classify: Classify | None,
        *,
        default_window: int,
        classifying: bool = False,
        log: GuardLog | None = None,
    ) -> None:
        self.guards = tuple(guards)
        self.classify = classify
        self.classifying = classifying
        self.default_window = default_window
        self.log = log if log is not None else GuardLog()
        self.unchecked = self.guards  # those that have not read the input yet
        self.callers: list[str] = []  # the caller's texts as the input guards left them
        # The participants' names of the caller's turns (the OpenAI door's; None: unnamed) as the input guards left
        # them: they are sent with their turns, so what a guard finds in one is redacted or blocked there too.
        self.names: list[str | None] = []
        output = [g for g in self.guards if g.checks("output")]
        self.output = [g for g in output if not g.graded]
        self.graded_output = [g for g in output if g.graded]
        windows = [g.window or default_window for g in self.output]
        # None: held to the end (a model-graded output guard reads the whole answer).
        self.window: int | None = None if self.graded_output else max(windows, default=0)

    def with_fallback(self, guards: Sequence[Guard]) -> Guarding:
        """These guards and a fallback config's (``fallback_guards``) as one, keeping the log: the run moving to
        the fallback has its answer screened by both, in one window; ``check_input`` then runs only ``guards``,
        on the input as these left it."""
        joined = Guarding(
            [*self.guards, *guards],
            self.classify,
            default_window=self.default_window,
            classifying=self.classifying,
            log=self.log,
        )
        joined.unchecked = tuple(guards)
        joined.callers = list(self.callers)
        joined.names = list(self.names)
        return joined

    def _refuse_recursion(self) -> None:
        if self.classifying and any(g.graded for g in self.guards):
            raise GuardRecursionError(
                "a model guard's classifier prompt runs on a config with model guards of its own; "
                "give the classifier a config without model guards"
            )

    # -- input

    async def check_input(
        self, out: RenderOut, caller_texts: Sequence[str], names: Sequence[str | None] = ()
    ) -> RenderOut:
        """The rendering as sent after the input guards (redactions made); raises ContentBlockedError.

        ``names`` are the participants' names of the caller's turns, the last ``len(names)`` messages (None: a turn
        without one): the model reads them with their messages, so the guards read them as they read the
        messages, and ``self.names`` is them as sent (redacted where a redacting guard found something).

        Each guard reads the input once: a second call (``with_fallback``'s) runs only those added since.
        """
        self._refuse_recursion()
        texts = [m.content for m in out.messages] if out.messages is not None else [out.text or ""]
        named = list(names)
        callers = [t for t in caller_texts if t]
        roles = [m.role for m in out.messages] if out.messages is not None else []
        first = len(texts) - len(named)  # the message of the first name: names are of the last messages
        for guard in self.unchecked:
            if not guard.checks("input"):
                continue
            if guard.graded:
                await self._grade(guard, "input", _prompt_text(_with_texts(out, texts), named))
                continue
            if guard.kind in ("injection", "delimiters"):
                found = [(text, self._caller_findings(guard, text, texts)) for text in callers]
                in_names = [
                    (
                        name,
                        [] if name is None else self._name_findings(guard, name, _turn(roles, texts, first + i, name)),
                    )
                    for i, name in enumerate(named)
                ]
                kinds = [f.kind for _, findings in (*found, *in_names) for f in findings]
                if not kinds:
                    continue
                if guard.action == "redact":
                    # The caller's text is in the rendered messages: its findings are masked there.
                    for text, findings in found:
                        for finding in findings:
                            piece = text[finding.start : finding.end]
                            texts = [t.replace(piece, finding.replacement) for t in texts]
                    callers = [redacted(text, findings) for text, findings in found]
                    # A name's findings are masked in that name alone: it is in no message's content.
                    named = [None if name is None else redacted(name, findings) for name, findings in in_names]
            else:
                found = [(text, _find(guard, text)) for text in texts]
                in_names = [(name, [] if name is None else _find(guard, name)) for name in named]
                kinds = [f.kind for _, findings in (*found, *in_names) for f in findings]
                if not kinds:
                    continue
                if guard.action == "redact":
                    texts = [redacted(text, findings) for text, findings in found]
                    # The redacted name is sent as it is: vLLM takes any string as a name.
                    named = [None if name is None else redacted(name, findings) for name, findings in in_names]
            self._act(guard, "input", kinds)
        self.unchecked, self.callers, self.names = (), callers, named
        return _with_texts(out, texts)

    @staticmethod
    def _caller_findings(guard: Guard, text: str, rendered: Sequence[str]) -> list[Finding]:
        if guard.kind == "injection":
            return merged(injection_findings(text))
        around = next((r for r in rendered if text in r), None)
        return delimiter_escapes(text, around)

    @staticmethod
    def _name_findings(guard: Guard, name: str, turn: str | None) -> list[Finding]:
        """What the guard finds in a participant's name, read in its own turn (``_turn``): never in another
        message, whose quotes or tags are not around it, nor in its own message's content, which it is not in."""
        if guard.kind == "injection":
            return merged(injection_findings(name))
        return delimiter_escapes(name, turn)

    def _act(self, guard: Guard, stage: Stage, kinds: Sequence[str]) -> None:
        if guard.action == "block":
            raise self.log.block(guard, stage, kinds)
        self.log.add(guard, stage, "redacted" if guard.action == "redact" else "flagged", kinds)

    async def _grade(self, guard: Guard, stage: Stage, text: str) -> None:
        if self.classify is None:
            self._refuse_recursion()
            return
        try:
            verdict = await self.classify(guard, text, stage)
        except RegistryError as exc:
            if guard.on_error == "block":
                raise self.log.block(guard, stage, ["classifier_error"], error=exc.type) from exc
            self.log.add(guard, stage, "error", error=exc.type, detail=exc.detail[:300])
            return
        detail = {"category": verdict.category[:64]} if verdict.category else {}
        if not verdict.flagged:
            self.log.add(guard, stage, "passed", **detail)
        elif guard.action == "block":
            raise self.log.block(guard, stage, [verdict.category or "flagged"], **detail)
        else:
            self.log.add(guard, stage, "flagged", [verdict.category or "flagged"], **detail)

    # -- output

    @property
    def screens_output(self) -> bool:
        return bool(self.output or self.graded_output)

    async def check_output(self, text: str, context: str = "") -> str:
        """The (rest of the) answer after the output guards; raises ContentBlockedError."""
        released, _ = self._release(text, context, final=True)
        for guard in self.graded_output:
            await self._grade(guard, "output", released)
        return released

    async def screen(self, texts: AsyncIterator[str]) -> AsyncIterator[str]:
        """``texts`` held back by the window and screened; the rest is released at the end. Never yields ""."""
        if not self.screens_output:
            async for text in texts:
                if text:
                    yield text
            return
        held, context = "", ""
        async for text in texts:
            if not text:
                continue
            held += text
            # Screened once a quarter window of new text has come, not at every chunk: the scan reads the
            # whole window, so this keeps its cost per character flat; what is held stays at least the window.
            if self.window is None or len(held) < self.window + max(1, self.window // 4):
                continue
            released, kept = self._release(held, context, final=False)
            if released:
                context = (context + held[: len(held) - len(kept)])[-self.window :]
                held = kept
                yield released
        released = await self.check_output(held, context)
        if released:
            yield released

    def _release(self, held: str, context: str, *, final: bool) -> tuple[str, str]:
        """What of ``held`` may leave now (redacted) and what stays held; raises on a block.

        ``context`` is the released text just before ``held``, read so that a pattern's look-behind
        and word boundaries see what the caller saw; findings entirely inside it were dealt with.
        """
        scan = context + held
        offset = len(context)
        cut = len(held) if final else max(0, len(held) - (self.window or 0))
        masks: list[Finding] = []
        undecided: list[Finding] = []
        for guard in self.output:
            findings = [f for f in _find(guard, scan) if f.end > offset]
            if not final:
                undecided += [f for f in findings if f.end >= len(scan)]
                findings = [f for f in findings if f.end < len(scan)]
            if not findings:
                continue
            self._act(guard, "output", [f.kind for f in findings])
            if guard.action == "redact":
                masks += findings
        # Nothing leaves that a mask or an undecided finding covers only in part.
        for finding in sorted(masks + undecided, key=lambda f: f.start):
            start, end = finding.start - offset, finding.end - offset
            if start < cut < end:
                cut = max(0, start)
        out = held[:cut]
        shifted = [
            Finding(max(0, f.start - offset), f.end - offset, f.kind, f.replacement)
            for f in masks
            if f.end - offset <= cut
        ]
        return redacted(out, shifted), held[cut:]


def _with_texts(out: RenderOut, texts: Sequence[str]) -> RenderOut:
    if out.messages is not None:
        current = [m.content for m in out.messages]
        if current == list(texts):
            return out
        messages = [Message(role=m.role, content=t) for m, t in zip(out.messages, texts, strict=True)]
        return msgspec.structs.replace(out, messages=messages)
    if texts[0] == (out.text or ""):
        return out
    return msgspec.structs.replace(out, text=texts[0])


def caller_texts(variables: Any) -> list[str]:
    """Every string among the caller's variables, nested values included."""
    if isinstance(variables, str):
        return [variables]
    if isinstance(variables, dict):
        return [text for value in variables.values() for text in caller_texts(value)]
    if isinstance(variables, list | tuple):
        return [text for value in variables for text in caller_texts(value)]
    return []


def guard_columns(guarding: Guarding | None) -> dict[str, Any]:
    """A completion record's guard columns."""
    if guarding is None:
        return {"guard_outcomes": None, "guard_blocked": None, "guard_flagged": False}
    log = guarding.log
    return {"guard_outcomes": log.outcomes or None, "guard_blocked": log.blocked, "guard_flagged": log.flagged}
