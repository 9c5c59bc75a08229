"""The pure rules of the OpenAI door, from JSON case files: ``[description, *inputs, expected]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from registry.completions.schemas import CompletionMeta, ConfigRun, DoneEvent, UsageOut
from registry.openai_compat.errors import ModelNotFoundError
from registry.openai_compat.schemas import ChatCompletionRequest, TextCompletionRequest
from registry.openai_compat.service import ChunkEncoder, OpenAICall, config_field_problems, parse_model

CASES = Path(__file__).parent / "cases"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        name = metafunc.function.__name__.removeprefix("test_").split("_from_cases")[0]
        cases = json.loads((CASES / f"{name}.json").read_text())
        metafunc.parametrize("case", [case[1:] for case in cases], ids=[case[0] for case in cases])


def test_parse_model_from_cases(case: list[Any]) -> None:
    model, expected = case
    if expected is None:
        with pytest.raises(ModelNotFoundError):
            parse_model(model)
        return
    target = parse_model(model)
    assert [target.kind, target.name, target.label, target.version] == expected


def call(chat: bool, *, include_usage: bool) -> OpenAICall:
    return OpenAICall(
        service=None,  # type: ignore[arg-type]  # the encoder reads only what the call was asked
        name="greet",
        request=None,  # type: ignore[arg-type]
        model='prompt:gr"eet',
        chat=chat,
        include_usage=include_usage,
        id="chatcmpl-1" if chat else "cmpl-1",
        created=1_700_000_000,
    )


META = CompletionMeta(
    prompt="greet",
    version=2,
    config=ConfigRun(name="cfg", version=1, backend="local", model="tiny"),
    experiment=None,
    fallback_used=False,
    cached=True,
)
DONE = DoneEvent(
    finish_reason="length",
    usage=UsageOut(input_tokens=7, output_tokens=3, total_tokens=10),
    cost=0.5,
    latency_ms=1.0,
    ttft_ms=None,
)


def events(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\n\n")
    blocks = raw.decode().split("\n\n")[:-1]
    assert all(block.startswith("data: ") for block in blocks)
    return [block.removeprefix("data: ") if block == "data: [DONE]" else json.loads(block[6:]) for block in blocks]


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "text"])
def test_chunks_made_from_bytes_are_openais_json(chat: bool) -> None:
    encoder = ChunkEncoder(call(chat, include_usage=True))
    key = "delta" if chat else "text"

    start = events(encoder.start()) if chat else []
    delta = events(encoder.delta('a "quoted"\nline'))
    end = events(encoder.done(META, DONE))

    envelope = {"id": "chatcmpl-1" if chat else "cmpl-1", "created": 1_700_000_000, "model": 'prompt:gr"eet'}
    kind = "chat.completion.chunk" if chat else "text_completion"
    for chunk in [*start, *delta, *end[:-1]]:
        assert {name: chunk[name] for name in envelope} == envelope
        assert chunk["object"] == kind
    if chat:
        assert start[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = delta[0]["choices"][0]
    assert (text["delta"]["content"] if chat else text["text"]) == 'a "quoted"\nline'
    assert text["finish_reason"] is None
    last, usage, done = end
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["choices"][0][key] == ({} if chat else "")
    assert last["registry"] == {**msgspec.to_builtins(META), "prompt": "greet", "version": 2, "cost": 0.5}
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert done == "[DONE]"


def test_without_include_usage_the_stream_ends_with_the_finish_chunk() -> None:
    end = events(ChunkEncoder(call(True, include_usage=False)).done(META, DONE))

    assert len(end) == 2
    assert end[0]["choices"][0]["finish_reason"] == "length"
    assert end[1] == "[DONE]"


@pytest.mark.parametrize(
    ("body", "request_type"),
    [
        ({"model": "m", "messages": [], "temperature": 1}, ChatCompletionRequest),
        ({"model": "m", "top_p": 1}, TextCompletionRequest),
    ],
    ids=["chat", "text"],
)
def test_sampling_fields_are_known_so_they_are_refused_by_name(body: dict[str, Any], request_type: type) -> None:
    problems = config_field_problems(msgspec.convert(body, request_type))

    assert [problem.field for problem in problems] == [name for name in body if name not in ("model", "messages")]
