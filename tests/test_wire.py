"""Reading a server's answers as untrusted input (wire.py): what is accepted, what fails how."""

from __future__ import annotations

import doctest

import pytest

from modal_llm_serving import redact
from modal_llm_serving.endpoint import wire
from modal_llm_serving.endpoint.wire import (
    MalformedResponse,
    error_message,
    read_chat_completion,
    read_chunk,
)


def test_module_examples() -> None:
    for module in (wire, redact):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_a_well_formed_stream_reads_as_the_harness_counts_it() -> None:
    opener = read_chunk({"id": "c", "choices": [{"delta": {"role": "assistant", "content": ""}}]},
                        chat=True)
    token = read_chunk({"id": "c", "choices": [{"delta": {"content": "Hi"}}]}, chat=True)
    usage = read_chunk({"id": "c", "choices": [], "usage": {"prompt_tokens": 3,
                                                            "completion_tokens": 2}}, chat=True)
    assert not opener.token_bearing and token.token_bearing and token.text == "Hi"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.token_bearing) == (3, 2, False)
    assert read_chunk({"choices": [{"text": "x"}]}, chat=False).text == "x"


@pytest.mark.parametrize(("payload", "words"), [
    ([1, 2], "not an object"),
    ({"choices": "x"}, "choices is a str"),
    ({"choices": [3]}, "choices[0] is a number"),
    ({"choices": [{"delta": "text"}]}, "choices[0].delta is a str"),
    ({"choices": [{"delta": {"content": 5}}]}, "choices[0].delta.content is a number"),
    ({"choices": [], "usage": [1]}, "usage is a array"),
    ({"choices": [], "usage": {"completion_tokens": "7"}}, "usage.completion_tokens is '7'"),
    ({"choices": [], "usage": {"completion_tokens": True}}, "not a token count"),
    ({"choices": [], "usage": {"prompt_tokens": -1}}, "not a token count"),
    ({"id": 5, "choices": []}, "id is a number"),
])
def test_wrong_types_fail_with_the_field_named(payload: object, words: str) -> None:
    with pytest.raises(MalformedResponse, match=words.replace("[", r"\[").replace("]", r"\]")):
        read_chunk(payload, chat=True)


def test_an_error_event_and_error_bodies_are_one_line() -> None:
    assert read_chunk({"error": {"message": "boom\nline two"}}, chat=True).error == \
        "boom line two"
    assert error_message(b"<html>\n<body>503\n</body></html>") == "<html> <body>503 </body></html>"
    assert error_message(b'{"error": {"message": "bad model"}}') == "bad model"
    assert error_message(b"") == "(empty body)"


def test_a_chat_completion_needs_its_id_text_and_usage() -> None:
    body = {"id": "x", "choices": [{"message": {"content": "Paris."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    assert read_chat_completion(body).text == "Paris."
    for broken in ({**body, "choices": []}, {**body, "usage": {"prompt_tokens": 5}},
                   {**body, "choices": [{"message": "Paris."}]}, {**body, "id": None}):
        with pytest.raises(MalformedResponse):
            read_chat_completion(broken)


def test_one_secret_list_covers_the_doctors_names_too() -> None:
    """`mls doctor` registers redact's list from the environment it is given (not only this
    process's): Modal's OAuth values are on it; a longer secret is masked whole, never leaving
    the tail a shorter one it contains would."""
    env = {"MODAL_OAUTH_REFRESH_TOKEN": "oauth-refresh-1234", "VLLM_API_KEY": "vk-123",
           "PATH": "/usr/bin"}
    redact.forget_secrets()
    redact.register_secret("oauth-refresh")
    redact.register_environment(env)
    try:
        assert redact.redact("a oauth-refresh-1234 b vk-123 /usr/bin") == "a *** b *** /usr/bin"
    finally:
        redact.forget_secrets()
