"""SSE parsing of the OpenAI-compatible backend (pure functions, no server)."""

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from lmgauge.backends.base import GenerateRequest
from lmgauge.backends.openai import (
    OpenAIBackend,
    chunks_from_events,
    parse_sse_data,
    timings_from_event,
)
from lmgauge.errors import ProtocolError, ServerError


def test_data_lines_parse_and_the_rest_is_skipped() -> None:
    assert parse_sse_data('data: {"choices": []}') == {"choices": []}
    assert parse_sse_data("data:{}\r") == {}
    for line in ("", ": keep-alive", "data: [DONE]", "event: message", "id: 3", "retry: 10"):
        assert parse_sse_data(line) is None


@pytest.mark.parametrize(
    ("line", "message", "quoted"),
    [
        ("hello", "malformed SSE line", "'hello'"),
        ("data: {not json", "SSE data is not JSON", "'{not json'"),
        ("data: [1, 2]", "not a JSON object", "'[1, 2]'"),
    ],
)
def test_garbage_is_a_protocol_error_quoting_the_line(line: str, message: str, quoted: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse_sse_data(line)
    assert quoted in str(info.value)


def test_an_error_event_mid_stream_is_a_server_error() -> None:
    with pytest.raises(ServerError, match="server reported an error mid-stream"):
        parse_sse_data('data: {"error": {"message": "out of memory"}}')


def test_one_event_is_one_token_even_with_no_text() -> None:
    events = [
        ({"choices": [{"text": "a", "finish_reason": None}]}, 1.0),
        ({"choices": [{"text": "", "finish_reason": None}]}, 1.1),  # half a UTF-8 character
        ({"choices": [{"text": "", "finish_reason": "length"}]}, 1.2),  # closing event
    ]
    chunks = list(chunks_from_events(events, chat=False))
    assert [c.tokens for c in chunks] == [1, 1, 0]
    assert chunks[-1].finish_reason == "length"


def test_chat_deltas_count_content_and_reasoning() -> None:
    events = [
        ({"choices": [{"delta": {"role": "assistant"}}]}, 1.0),
        ({"choices": [{"delta": {"reasoning_content": "hm"}}]}, 1.1),
        ({"choices": [{"delta": {"content": "ok"}, "finish_reason": None}]}, 1.2),
    ]
    chunks = list(chunks_from_events(events, chat=True))
    assert [c.tokens for c in chunks] == [0, 1, 1]
    assert [c.reasoning for c in chunks] == [False, True, False]
    lm_studio = [({"choices": [{"delta": {"reasoning": "so"}}]}, 1.0)]
    assert [c.reasoning for c in chunks_from_events(lm_studio, chat=True)] == [True]


def test_llama_server_timings_and_openai_usage() -> None:
    event = {
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5},
        "timings": {
            "prompt_n": 12,
            "prompt_ms": 40.0,
            "predicted_n": 5,
            "predicted_ms": 250.0,
            "cache_n": 3,
        },
    }
    timings = timings_from_event(event)
    assert timings is not None
    assert (timings.prompt_tokens, timings.output_tokens, timings.cached_prompt_tokens) == (
        12,
        5,
        3,
    )
    assert timings.prompt_s == pytest.approx(0.04)
    assert timings.decode_s == pytest.approx(0.25)
    usage_only = timings_from_event(
        {
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4},
            }
        }
    )
    assert usage_only is not None
    assert (usage_only.prompt_tokens, usage_only.cached_prompt_tokens) == (7, 4)
    assert usage_only.prompt_s is None
    assert timings_from_event({"choices": []}) is None


def test_a_stats_only_event_is_a_zero_token_chunk() -> None:
    chunks = list(
        chunks_from_events([({"choices": [], "usage": {"prompt_tokens": 3}}, 2.0)], chat=False)
    )
    assert len(chunks) == 1
    assert chunks[0].tokens == 0
    assert chunks[0].timings is not None


@pytest.mark.asyncio
async def test_a_token_holding_a_unicode_line_break_stays_one_event() -> None:
    """U+0085 and U+2028 inside a JSON string must not cut the SSE line (httpx's
    aiter_lines would), and a line may arrive split across network reads."""
    events = [{"choices": [{"text": t, "finish_reason": None}]} for t in ("a\u0085b", "c\u2028")]
    body = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
    raw = (body + "data: [DONE]\n\n").encode()

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream(), headers={"content-type": "text/event-stream"})

    backend = OpenAIBackend("http://test", transport=httpx.MockTransport(handler))
    try:
        chunks = [c async for c in backend.generate(GenerateRequest("m", "p", max_tokens=2))]
    finally:
        await backend.aclose()
    assert [c.text for c in chunks] == ["a\u0085b", "c\u2028"]


def test_thinking_goes_to_the_chat_template() -> None:
    backend = OpenAIBackend("http://test")
    off = backend._body(GenerateRequest("m", "p", max_tokens=1, chat=True, thinking=False))
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in backend._body(GenerateRequest("m", "p", max_tokens=1))
