"""The protocol's parameters and accounting, through the scripted fake backend."""

from __future__ import annotations

import asyncio

import pytest

from testtime.llm import FakeLLM, SamplingParams, Usage
from testtime.llm.fake import prompt_text
from testtime.llm.protocol import as_messages


def test_sampling_params_validate():
    assert SamplingParams(stop="###").stop == ("###",)
    for bad in (
        {"n": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"max_tokens": -1},
        {"stop": [""]},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    params = SamplingParams(temperature=0.7)
    assert params.with_(n=3).n == 3 and params.with_(n=3).temperature == 0.7
    with pytest.raises(ValueError):
        params.with_(n=-1)


def test_chat_messages_are_checked():
    assert as_messages("hi") is None
    assert as_messages([{"role": "user", "content": "hi", "extra": 1}]) == [{"role": "user", "content": "hi"}]
    for bad in ([], [{"content": "x"}], [{"role": "user"}], ["text"]):
        with pytest.raises(ValueError):
            as_messages(bad)
    llm = FakeLLM()
    with pytest.raises(ValueError):
        llm.generate([[{"role": "user"}]])
    assert llm.usage == Usage()  # a rejected call costs nothing


def test_fake_scripts_and_accounting():
    llm = FakeLLM(lambda prompt, index: f"answer {index} to {prompt}")
    out = llm.generate(["two words", [{"role": "user", "content": "hello"}]], n=2, max_tokens=10)
    assert [[c.text for c in choices] for choices in out] == [
        ["answer 0 to two words", "answer 1 to two words"],
        ["answer 0 to user: hello", "answer 1 to user: hello"],
    ]
    # 4 completions; prompt tokens once per call: 2 words x 2 + 2 words x 2; completion tokens 5+5+5+5.
    assert llm.usage.calls == 4 and llm.usage.requests == 2
    assert llm.usage.prompt_tokens == 8 and llm.usage.completion_tokens == 20
    assert llm.usage.total_tokens == 28 and llm.usage.wall_seconds > 0
    before = Usage(**{k: v for k, v in llm.usage.as_dict().items() if k != "total_tokens"})
    llm.generate(["x"])
    assert (llm.usage - before).calls == 1


def test_fake_max_tokens_stop_and_sequence():
    llm = FakeLLM(["one two three four", "alpha ### beta", "last"])
    first = llm.generate(["p"], max_tokens=2)[0][0]
    assert (first.text, first.finish_reason, first.completion_tokens) == ("one two", "length", 2)
    second = llm.generate(["p"], stop=["###"])[0][0]
    assert (second.text, second.finish_reason) == ("alpha ", "stop")
    assert llm.complete("p") == "last"
    with pytest.raises(IndexError, match="exhausted"):
        llm.generate(["p"])
    cycling = FakeLLM(["a", "b"], cycle=True)
    assert [cycling.complete("q") for _ in range(3)] == ["a", "b", "a"]


def test_fake_mapping_and_echo_and_logprobs():
    llm = FakeLLM({"capital": "Paris"})
    assert llm.complete("What is the capital of France?") == "Paris"
    with pytest.raises(KeyError):
        llm.complete("unrelated")
    echo = FakeLLM()
    assert echo.complete([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "user: u"
    got = echo.generate(["a b c"], logprobs=True)[0][0]
    assert got.logprobs == [-1.0, -1.0, -1.0]
    assert echo.requests[-1].prompt == "a b c" and echo.requests[-1].params.logprobs


def test_async_equals_sync_and_counts_concurrent_calls():
    llm = FakeLLM(lambda prompt, index: prompt.upper())

    async def main():
        return await asyncio.gather(*(llm.agenerate([f"p{i}"], temperature=0) for i in range(5)))

    results = asyncio.run(main())
    assert [r[0][0].text for r in results] == [f"P{i}" for i in range(5)]
    assert llm.usage.calls == 5
    assert llm.generate(["p3"], temperature=0)[0][0].text == results[3][0][0].text
    assert prompt_text([{"role": "user", "content": "x"}]) == "user: x"
