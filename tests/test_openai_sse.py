"""The OpenAI-compatible backend's SSE parsing (openai_stream.py) on events shaped as the
servers write them, and its requests to FAKE servers (httpx.MockTransport); no real server
runs here (tests/test_mlx.py and tests/test_llama_server.py run the real ones)."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lmgauge.backends.base import GenerateRequest, LoadSettings
from lmgauge.backends.openai import OpenAIBackend, check_llama_server_props
from lmgauge.backends.openai_stream import chunks_from_events, parse_sse_data, timings_from_event
from lmgauge.errors import (
    ConfigError,
    ContextTooLargeError,
    ModelNotFoundError,
    ProtocolError,
    ServerError,
)
from lmgauge.measure import Sample


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


def _chat_event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def test_llama_server_opening_role_delta_is_no_token() -> None:
    """Events shaped as llama-server writes a chat stream (llama.cpp 0c1e570
    tools/server/server-task.cpp L1133-1138: the first partial adds a role delta with
    ``content: null``; L462-520: a final empty delta, then usage and timings)."""
    events = [
        _chat_event({"role": "assistant", "content": None}),
        _chat_event({"content": "Hel"}),
        _chat_event({"content": "lo"}),
        _chat_event({}, "length"),
        {
            "choices": [],
            "usage": {"completion_tokens": 2, "prompt_tokens": 9},
            "timings": {
                "prompt_n": 9,
                "cache_n": 0,
                "prompt_ms": 9.0,
                "predicted_n": 2,
                "predicted_ms": 25.0,
            },
        },
    ]
    chunks = list(chunks_from_events([(e, 1.0 + i / 10) for i, e in enumerate(events)], chat=True))
    assert [c.tokens for c in chunks] == [0, 1, 1, 0, 0]
    vllm_opening = _chat_event({"role": "assistant", "content": ""})
    assert [c.tokens for c in chunks_from_events([(vllm_opening, 1.0)], chat=True)] == [0]


MLX_LONE_SPACES = [  # 24 lone-space tokens: mlx_lm.server held them all back to the end
    {
        "object": "text_completion",
        "choices": [{"index": 0, "finish_reason": None, "text": " " * 23}],
    },
    {"object": "text_completion", "choices": [{"index": 0, "finish_reason": "length", "text": ""}]},
    {
        "object": "chat.completion",
        "choices": [],
        "usage": {
            "prompt_tokens": 113,
            "completion_tokens": 24,
            "total_tokens": 137,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    },
]


def test_tokens_no_event_showed_are_topped_up_from_the_usage_count() -> None:
    """Events as mlx_lm.server 0.32.2 streamed them here (tests/test_mlx.py makes it emit
    them): it writes an event only when there is text, and its BPE detokenizer holds a
    lone space back until a later token, so 24 tokens came in one event. The usage event
    carries the count; without it, measure() saw 1 token and an "early stop"."""
    chunks = list(
        chunks_from_events([(e, 1.0 + i) for i, e in enumerate(MLX_LONE_SPACES)], chat=False)
    )
    assert [c.tokens for c in chunks] == [1, 0, 23]
    assert chunks[-1].timings is not None
    assert chunks[-1].timings.output_tokens == 24


def test_an_eos_in_the_count_is_no_output_token() -> None:
    """On finish "stop" the count includes the end-of-sequence token (mlx_lm.server appends
    every sampled token; llama-server's n_gen counts it too): 3 tokens of text here, 4
    counted. A count that agrees with the events adds nothing, and a count before the
    answer has finished (llama-server's timings_per_token partials) is not used."""
    stop = [
        {"choices": [{"text": "a", "finish_reason": None}]},
        {"choices": [{"text": "bc", "finish_reason": None}]},  # two tokens, one event
        {"choices": [{"text": "", "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}},
    ]
    chunks = list(chunks_from_events([(e, 1.0) for e in stop], chat=False))
    assert [c.tokens for c in chunks] == [1, 1, 0, 1]
    agreeing = [*stop[:3], {"choices": [], "usage": {"completion_tokens": 3}}]
    chunks = list(chunks_from_events([(e, 1.0) for e in agreeing], chat=False))
    assert [c.tokens for c in chunks] == [1, 1, 0, 0]
    partial = {"choices": [{"text": "a", "finish_reason": None}], "timings": {"predicted_n": 9}}
    assert [c.tokens for c in chunks_from_events([(partial, 1.0)], chat=False)] == [1]


def test_topped_up_thinking_stays_thinking() -> None:
    """Think tags decode to no text on mlx_lm.server, so the tokens the count adds after a
    run of reasoning deltas are counted as thinking, as Ollama's text-less tokens are."""
    events = [
        _chat_event({"role": "assistant", "reasoning": "hm"}),
        _chat_event({"role": "assistant"}, "length"),
        {"choices": [], "usage": {"completion_tokens": 3}},
    ]
    chunks = list(chunks_from_events([(e, 1.0) for e in events], chat=True))
    assert [(c.tokens, c.reasoning) for c in chunks] == [(1, True), (0, False), (2, True)]


def test_llama_server_timings_and_openai_usage() -> None:
    event = {
        "choices": [],
        "usage": {"prompt_tokens": 15, "completion_tokens": 5},
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
        15,
        5,
        3,
    )
    assert timings.decode_tokens == 4
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


# The last event of a llama-server chat stream with include_usage, with the fields
# llama.cpp 0c1e570 writes (tools/server/server-task.cpp L462-520; timings from
# server-common.cpp L84-104) and made-up values that obey its rules: 16 of the 128 prompt
# tokens came from its cache, 64 tokens were generated, and predicted_per_second is
# 1e3 / predicted_ms * (predicted_n - 1).
LLAMA_SERVER_FINAL = {
    "choices": [],
    "model": "qwen3-0.6b-q4_k_m.gguf",
    "object": "chat.completion.chunk",
    "usage": {
        "completion_tokens": 64,
        "prompt_tokens": 128,
        "total_tokens": 192,
        "prompt_tokens_details": {"cached_tokens": 16},
    },
    "timings": {
        "cache_n": 16,
        "prompt_n": 112,
        "prompt_ms": 280.0,
        "prompt_per_token_ms": 2.5,
        "prompt_per_second": 400.0,
        "predicted_n": 64,
        "predicted_ms": 1575.0,
        "predicted_per_token_ms": 25.0,
        "predicted_per_second": 40.0,
    },
}


def test_llama_server_decode_time_covers_all_tokens_but_the_first() -> None:
    """llama-server times decode from the first sampled token to the last: predicted_ms
    spans predicted_n - 1 steps (server-common.h n_gen_steps). Its prompt_n leaves out the
    cache_n tokens its cache served, so the prompt is prompt_n + cache_n, and the prefill
    rate counts prompt_n only. Both rates must agree with the server's own."""
    timings = timings_from_event(LLAMA_SERVER_FINAL)
    assert timings is not None
    assert (timings.prompt_tokens, timings.cached_prompt_tokens) == (128, 16)
    assert (timings.output_tokens, timings.decode_tokens) == (64, 63)
    sample = Sample(requested_tokens=64, ok=True, output_tokens=64, server=timings)
    own = LLAMA_SERVER_FINAL["timings"]
    assert isinstance(own, dict)
    assert sample.server_decode_tokens_per_s == pytest.approx(own["predicted_per_second"])
    assert sample.server_prefill_tokens_per_s == pytest.approx(own["prompt_per_second"])
    one = timings_from_event({"timings": {"predicted_n": 1, "predicted_ms": 0.001}})
    assert one is not None
    assert one.decode_tokens is None  # one token: no decode step was timed


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


def test_a_seed_goes_only_when_asked_for_and_sampling() -> None:
    """Fake (no request is sent). mlx_lm.server cannot batch a request that carries a seed
    (mlx_lm/server.py _is_batchable), and greedy decoding ignores one."""
    backend = OpenAIBackend("http://test")
    assert GenerateRequest("m", "p", max_tokens=1).seed is None
    for temperature, seed in [(0.0, None), (0.0, 7), (0.8, None)]:
        request = GenerateRequest("m", "p", max_tokens=1, temperature=temperature, seed=seed)
        assert "seed" not in backend._body(request)
    sampled = GenerateRequest("m", "p", max_tokens=1, temperature=0.8, seed=0)
    assert backend._body(sampled)["seed"] == 0


def _fake_server(props: httpx.Response, bodies: list[dict[str, Any]]) -> OpenAIBackend:
    """A FAKE OpenAI-compatible server: GET /props answers ``props``; a POST is recorded
    and answered with a one-token stream."""
    stream = b'data: {"choices": [{"text": "a", "finish_reason": "length"}]}\n\ndata: [DONE]\n\n'

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/props":
            return props
        if request.method == "GET":
            return httpx.Response(200, json={"data": []})
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    return OpenAIBackend("http://test", transport=httpx.MockTransport(handler))


LLAMA_SERVER_PROPS = {  # GET /props of llama-server (server-context.cpp L579-624), abridged
    "default_generation_settings": {"n_ctx": 4096, "params": {"cache_prompt": True}},
    "total_slots": 1,
    "build_info": "b1-0c1e570",
}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("props", "cache_prompt"),
    [
        (httpx.Response(200, json=LLAMA_SERVER_PROPS), False),
        (httpx.Response(404, text="Not Found"), None),  # mlx_lm.server, vLLM
        (
            httpx.Response(200, json={"error": "Unexpected endpoint or method. (GET /props)"}),
            None,
        ),  # LM Studio
    ],
    ids=["llama-server", "404", "lm-studio"],
)
async def test_cache_prompt_goes_only_to_llama_server(
    props: httpx.Response, cache_prompt: bool | None
) -> None:
    """FAKE servers. Only llama-server reads cache_prompt (mlx_lm/server.py reads no such
    field and always reuses the longest cached prefix). Once load() (or info()) has asked
    GET /props, only llama-server gets it; before that it goes to any server, which keeps
    llama-server's prefix cache (on by default) off in a timed request."""
    bodies: list[dict[str, Any]] = []
    backend = _fake_server(props, bodies)
    try:
        request = GenerateRequest("m", "p", max_tokens=1)
        assert [c.tokens async for c in backend.generate(request)] == [1]
        assert bodies[-1]["cache_prompt"] is False  # not known yet: sent
        await backend.load("m", LoadSettings())
        assert bodies[-1].get("cache_prompt") is cache_prompt
        assert [c.tokens async for c in backend.generate(request)] == [1]
        assert bodies[-1].get("cache_prompt") is cache_prompt
        info = await backend.info()
        assert (info.version == "b1-0c1e570") == (cache_prompt is not None)
    finally:
        await backend.aclose()


def test_thinking_goes_to_the_chat_template() -> None:
    backend = OpenAIBackend("http://test")
    off = backend._body(GenerateRequest("m", "p", max_tokens=1, chat=True, thinking=False))
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in backend._body(GenerateRequest("m", "p", max_tokens=1))


def _props(model_path: str, n_ctx: int = 4096, slots: int = 1, **more: Any) -> dict[str, Any]:
    return {
        "default_generation_settings": {"n_ctx": n_ctx},
        "total_slots": slots,
        "model_path": model_path,
        "model_alias": model_path,
        **more,
    }


@pytest.mark.parametrize(
    "asked",
    [
        "/models/q-Q8_0.gguf",
        "/elsewhere/q-Q8_0.gguf",
        "q-Q8_0.gguf",
        "q-q8_0",
        "/models/q-Q8_0.gguf/",
    ],
)
def test_llama_server_serving_the_asked_file_passes(asked: str) -> None:
    """The file is compared by name: a catalog name or another copy's path is the same file."""
    check_llama_server_props(_props("/models/q-Q8_0.gguf"), asked, LoadSettings(), "http://s")


def test_llama_server_serving_another_model_is_model_not_found() -> None:
    """llama-server in single-model mode ignores a request's ``model``: /props tells."""
    with pytest.raises(
        ModelNotFoundError, match=r"serving /models/a\.gguf, not 'b\.gguf'.*--model"
    ):
        check_llama_server_props(_props("/models/a.gguf"), "b.gguf", LoadSettings(), "http://s")
    router = _props("none", n_ctx=0, slots=4, role="router")  # picks the model by name
    check_llama_server_props(router, "b.gguf", LoadSettings(), "http://s")


def test_llama_server_context_and_slots_must_be_the_cases() -> None:
    """/props n_ctx is per slot; --ctx-size is the total over the --parallel slots."""
    settings = LoadSettings(context_tokens=2048, parallel_slots=2)
    check_llama_server_props(_props("/m.gguf", 2048, 2), "/m.gguf", settings, "http://s")
    with pytest.raises(ConfigError, match=r"4 slots .* asks for 2: start it with --parallel 2"):
        check_llama_server_props(_props("/m.gguf", 2048, 4), "/m.gguf", settings, "http://s")
    with pytest.raises(ConfigError, match=r"1024 tokens per slot.*asks for 2048.*--ctx-size 4096"):
        check_llama_server_props(_props("/m.gguf", 1024, 2), "/m.gguf", settings, "http://s")


@pytest.mark.asyncio
async def test_load_checks_props_and_keeps_them() -> None:
    props = httpx.Response(200, json=_props("/m/a.gguf", n_ctx=512))
    backend = _fake_server(props, [])
    try:
        with pytest.raises(ConfigError, match="512 tokens per slot"):
            await backend.load("a.gguf", LoadSettings())
        assert backend.props is not None
        assert backend.props["model_path"] == "/m/a.gguf"
        await backend.load("a.gguf", LoadSettings(context_tokens=512))
    finally:
        await backend.aclose()


OVERFLOW = {  # llama-server's answer, before any SSE (server-context.cpp, server-common.cpp)
    "error": {
        "code": 400,
        "message": "request (1801 tokens) exceeds the available context size (256 tokens), "
        "try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 1801,
        "n_ctx": 256,
    }
}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (httpx.Response(400, json=OVERFLOW), ContextTooLargeError, r"1801 tokens.*256.*--ctx-size"),
        (
            httpx.Response(400, json={"error": {"code": 400, "message": "model 'x' not found"}}),
            ModelNotFoundError,
            "model 'm'",
        ),
    ],
    ids=["context", "router-model"],
)
async def test_llama_server_400s_are_named(
    answer: httpx.Response, error: type[Exception], message: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return answer

    backend = OpenAIBackend("http://test", transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(error, match=message):
            async for _ in backend.generate(GenerateRequest("m", "p", max_tokens=1)):
                pass
    finally:
        await backend.aclose()
