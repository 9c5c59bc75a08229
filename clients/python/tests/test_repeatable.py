"""Which templates render the same text for the same variables, so the service may reuse a render."""

from __future__ import annotations

import pytest
from prompt_registry_client.templating import RenderLimits, compile_prompt, repeatable_output


@pytest.mark.parametrize(
    "template",
    [
        "Hello {{ name }}",
        "{% for i in range(3) %}{{ i }}{% endfor %}{{ name|upper }}",
        "{{ items|map('upper')|join(', ') }}",
        "{{ items|map(attribute='x')|list }}",
        "{% set ns = namespace(n=0) %}{{ ns.n }}{{ dict(a=1) }}",
    ],
)
def test_templates_without_random_are_repeatable(template: str) -> None:
    assert compile_prompt("text", template=template).repeatable


@pytest.mark.parametrize(
    "template",
    [
        "{{ items|random }}",
        "{% filter random %}abc{% endfilter %}",
        "{{ items|map('random')|list }}",
        "{{ items|map(name)|list }}",  # the filter's name is a variable: it may be 'random'
        "{{ items|map('ran' ~ 'dom')|list }}",
        "{{ items|map(*names)|list }}",
    ],
)
def test_templates_that_may_reach_random_are_not(template: str) -> None:
    assert not compile_prompt("text", template=template).repeatable


def test_one_unrepeatable_message_makes_the_chat_prompt_unrepeatable() -> None:
    messages = [{"role": "system", "content": "Be {{ tone }}."}, {"role": "user", "content": "{{ qs|random }}"}]
    assert not compile_prompt("chat", messages=messages).repeatable
    assert compile_prompt("chat", messages=messages[:1]).repeatable


def test_a_printed_memory_address_is_not_repeatable_output() -> None:
    rendered = compile_prompt("text", template="{{ range }}").render({}, RenderLimits())
    assert isinstance(rendered, str)
    assert " at 0x" in rendered
    assert not repeatable_output(rendered)
    assert repeatable_output("Hello Ada, at 0 x")
