"""Parsing an OpenAI-compatible SSE stream: pure functions, no I/O.

An event is, as a rule, one token, but not always: mlx_lm.server writes an event only
when there is text, so a token that decodes to nothing yet (half a UTF-8 character, a
lone space, a think tag) rides on a later event (mlx_lm/server.py, tokenizer_utils.py).
The usage count at the end tops the tokens up (``StreamAssembler``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from lmgauge.backends.base import Chunk, ServerTimings
from lmgauge.errors import ProtocolError, ServerError


def parse_sse_data(line: str) -> dict[str, Any] | None:
    """The JSON of one SSE ``data:`` line; None for comments, blank lines and ``[DONE]``.

    Raises ProtocolError, quoting the line, for anything else.
    """
    line = line.rstrip("\r")
    if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
        return None
    if not line.startswith("data:"):
        raise ProtocolError(f"malformed SSE line (expected 'data: ...'): {line[:120]!r}")
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"SSE data is not JSON ({exc.msg}): {payload[:120]!r}") from exc
    if not isinstance(event, dict):
        raise ProtocolError(f"SSE data is not a JSON object: {payload[:120]!r}")
    if "error" in event:
        raise ServerError(f"server reported an error mid-stream: {event['error']}", 500)
    return event


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _ms_to_s(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return value / 1000 if ok else None


def timings_from_event(event: dict[str, Any]) -> ServerTimings | None:
    """Server timings from llama.cpp's ``timings`` and the OpenAI ``usage`` object.

    llama-server's ``prompt_n`` counts only the prompt tokens it processed; the ones its
    cache served are ``cache_n``. Its ``predicted_ms`` runs from the first sampled token to
    the last, so it times ``predicted_n - 1`` decode steps: the first token comes from the
    last prompt batch's logits (llama.cpp tools/server/server-common.h, n_gen_steps).
    """
    timings = event.get("timings")
    usage = event.get("usage")
    if not isinstance(timings, dict) and not isinstance(usage, dict):
        return None
    t = timings if isinstance(timings, dict) else {}
    u = usage if isinstance(usage, dict) else {}
    details = u.get("prompt_tokens_details")
    cached = _count(t.get("cache_n"))
    if cached is None and isinstance(details, dict):
        cached = _count(details.get("cached_tokens"))
    prompt_tokens = _count(u.get("prompt_tokens"))  # the whole prompt, cached tokens included
    processed = _count(t.get("prompt_n"))
    if processed is not None:
        prompt_tokens = processed + (_count(t.get("cache_n")) or 0)
    output_tokens = _count(t.get("predicted_n"))
    decode_tokens = output_tokens - 1 if output_tokens is not None and output_tokens >= 2 else None
    if output_tokens is None:
        output_tokens = _count(u.get("completion_tokens"))
    return ServerTimings(
        prompt_tokens=prompt_tokens,
        cached_prompt_tokens=cached,
        prompt_s=_ms_to_s(t.get("prompt_ms")),
        output_tokens=output_tokens,
        decode_tokens=decode_tokens,
        decode_s=_ms_to_s(t.get("predicted_ms")),
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def chunk_from_event(event: dict[str, Any], at_s: float, *, chat: bool) -> Chunk | None:
    """The Chunk of one parsed SSE event, counted as one token when it carries one; None
    for an empty event. StreamAssembler adds the tokens that no event showed."""
    choices = event.get("choices")
    timings = timings_from_event(event) if "usage" in event or "timings" in event else None
    if not choices:
        return Chunk("", 0, at_s, timings=timings) if timings is not None else None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ProtocolError(f"a choice is not an object: {str(choice)[:120]!r}")
    finish = choice.get("finish_reason")
    if chat:
        delta = choice.get("delta") or {}
        content = _text(delta.get("content"))
        # Thinking arrives as reasoning_content (llama-server, vLLM) or reasoning (LM Studio).
        thought = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
        reasoning = bool(thought) and not content
        text = content or thought
        # A delta without text is no token: llama-server opens with {"role": "assistant",
        # "content": null}, vLLM with content "" (a text-less token is in the usage count).
        tokens = 1 if text else 0
    else:
        reasoning, text = False, _text(choice.get("text"))
        # A token may decode to no text (half a UTF-8 character); it is still a token.
        tokens = 1 if "text" in choice and (text or finish is None) else 0
    return Chunk(text, tokens, at_s, finish_reason=finish, timings=timings, reasoning=reasoning)


class StreamAssembler:
    """Parsed SSE events (with their arrival times) in, Chunks out.

    Once the answer has finished, the server's count (llama-server's ``predicted_n``, else
    ``usage.completion_tokens``) tops up the tokens the events did not show, on the chunk
    that carries the count, as ollama_stream.ChunkAssembler does with ``eval_count``. On
    finish "stop" that count includes the end-of-sequence token, which is no output:
    mlx_lm.server appends every sampled token, EOS included (mlx_lm/server.py), as
    llama-server's n_gen does.
    """

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.tokens = 0
        self.finish_reason: str | None = None
        self._last_reasoning = False

    def add(self, event: dict[str, Any], at_s: float) -> Chunk | None:
        chunk = chunk_from_event(event, at_s, chat=self.chat)
        if chunk is None:
            return None
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        missing = self._uncounted(chunk)
        if missing > 0:
            reasoning = chunk.reasoning or (self._last_reasoning and not chunk.text)
            chunk = replace(chunk, tokens=chunk.tokens + missing, reasoning=reasoning)
        if chunk.tokens > 0:
            self._last_reasoning = chunk.reasoning
        self.tokens += chunk.tokens
        return chunk

    def _uncounted(self, chunk: Chunk) -> int:
        """The tokens the server counted and no event showed, once the answer finished."""
        counted = chunk.timings.output_tokens if chunk.timings is not None else None
        if counted is None or self.finish_reason is None:
            return 0
        generated = counted - 1 if self.finish_reason == "stop" and counted > 0 else counted
        return generated - self.tokens - chunk.tokens


def chunks_from_events(
    events: Iterable[tuple[dict[str, Any], float]], *, chat: bool
) -> Iterable[Chunk]:
    """The Chunks of a stream of parsed SSE events (with their arrival times)."""
    assembler = StreamAssembler(chat=chat)
    for event, at_s in events:
        chunk = assembler.add(event, at_s)
        if chunk is not None:
            yield chunk
