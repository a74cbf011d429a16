"""Parsing Ollama's NDJSON stream: pure functions, no I/O (fuzzed in tests/test_ollama.py).

One object per line, and as a rule one token per object, but not always: Ollama sends an
object only when it has text (llm/llama_server.go@fb30760 L1705, L2036; server/routes.go
L726, L2832), so a thinking tag makes none on /api/chat, and llama-server holds back a
token that ends inside a UTF-8 character and sends it with the next one. The final
``done: true`` object carries ``eval_count``, the true number of sampled tokens, and the
timings in nanoseconds (docs/api.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from lmgauge.backends.base import Chunk, ServerTimings
from lmgauge.backends.streams import LineSplitter
from lmgauge.errors import ProtocolError, ServerError

NS_PER_S = 1e9


def canonical_name(name: str) -> str:
    """A model name as /api/ps and /api/tags print it: lower case, tag ``latest`` by default."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parse_ndjson_line(line: str | bytes) -> dict[str, Any] | None:
    """The JSON object on one NDJSON line; None for a blank line.

    ProtocolError, quoting the line, for anything but a JSON object; ServerError for the
    ``{"error": ...}`` object Ollama sends when it fails mid-stream.
    """
    try:  # bad UTF-8 or JSON, over 4300 digits, deep nesting
        text = (line.decode("utf-8") if isinstance(line, bytes) else line).strip(" \t\r\n")
        obj = json.loads(text) if text else None
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ProtocolError(f"NDJSON line is not JSON ({reason}): {line[:120]!r}") from exc
    if not text:
        return None
    if not isinstance(obj, dict):
        raise ProtocolError(f"NDJSON line is not a JSON object: {text[:120]!r}")
    if "error" in obj:
        raise ServerError(f"Ollama reported an error mid-stream: {str(obj['error'])[:200]}", 500)
    return obj


class NDJSONSplitter(LineSplitter):
    """Lines of an NDJSON stream, parsed into objects."""

    def objects(self, data: bytes) -> Iterator[dict[str, Any]]:
        """The objects on the lines ``data`` completes, one by one; ``b"\\n"`` ends a stream."""
        return (obj for line in self.feed(data) if (obj := parse_ndjson_line(line)) is not None)


def json_count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def json_seconds(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return value / NS_PER_S if ok and math.isfinite(value) and value >= 0 else None


def json_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def json_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def timings_from_final(obj: dict[str, Any], *, chat: bool = False) -> ServerTimings:
    """The final object's counts and durations. llama.cpp starts its decode timer when it
    samples the first token, so eval_duration spans eval_count - 1 decode steps.

    Ollama sends its runner every prompt with ``cache_prompt: true`` (llm/llama_server.go
    @fb30760 L1560-1562, L2152-2155) and reports prompt_eval_count = cache_n + prompt_n but
    prompt_eval_duration = prompt_ms, the processed tokens' time only (L1503-1513,
    L1723-1726), without cache_n. Their ratio is a prefill rate only when nothing was
    reused: a raw /api/generate prompt that starts with a nonce (lmgauge.workload) shares
    at most the nonce's first token with any earlier one. On /api/chat the template's head
    is reused on every request, by an amount Ollama does not report: no prefill time there.
    """
    eval_count = json_count(obj.get("eval_count"))
    return ServerTimings(
        prompt_tokens=json_count(obj.get("prompt_eval_count")),  # cached tokens included
        prompt_s=None if chat else json_seconds(obj.get("prompt_eval_duration")),
        output_tokens=eval_count,
        decode_tokens=eval_count - 1 if eval_count is not None and eval_count >= 2 else None,
        decode_s=json_seconds(obj.get("eval_duration")),
        load_s=json_seconds(obj.get("load_duration")),  # includes waiting for the scheduler
        total_s=json_seconds(obj.get("total_duration")),
    )


class ChunkAssembler:
    """Streamed objects (with arrival times) in, Chunks out; one object counts one token.

    A text-less object (a thinking tag, which /api/generate with ``raw`` and ``think``
    sends) is a token of the thinking or the answer, as its neighbours are. Tokens that
    came in no object of their own (merged, or tags on /api/chat) are counted on the final
    chunk from eval_count, whatever the done_reason: with "stop", eval_count includes the
    end-of-sequence token (llama-server's n_gen counts every sampled token), which streams
    no text and is not counted.
    """

    def __init__(self, *, chat: bool, max_tokens: int | None = None) -> None:
        self.chat, self.max_tokens = chat, max_tokens
        self.done = False
        self.tokens = 0
        self._last_reasoning = False
        self._pending: list[float] = []  # arrival times of text-less tokens

    def _texts(self, obj: dict[str, Any]) -> tuple[str, str]:
        source = obj.get("message") if self.chat else obj
        if source is None:
            return "", ""
        if not isinstance(source, dict):
            raise ProtocolError(f"'message' is not an object: {str(source)[:120]!r}")
        texts = source.get("content" if self.chat else "response"), source.get("thinking")
        for value in texts:
            if value is not None and not isinstance(value, str):
                raise ProtocolError(f"streamed text is not a string: {str(value)[:120]!r}")
        return texts[0] or "", texts[1] or ""

    def _flush(self, next_reasoning: bool) -> Iterator[Chunk]:
        reasoning = self._last_reasoning or next_reasoning  # a closing tag is thinking
        yield from (Chunk("", 1, at_s, reasoning=reasoning) for at_s in self._pending)
        self.tokens += len(self._pending)
        self._pending.clear()

    def add(self, obj: dict[str, Any], at_s: float) -> Iterator[Chunk]:
        if self.done:
            return
        content, thinking = self._texts(obj)
        if obj.get("done") is True:
            yield from self._final(obj, content or thinking, not content and bool(thinking), at_s)
        elif not content and not thinking:
            self._pending.append(at_s)
        else:
            yield from self._flush(next_reasoning=not content)
            if thinking:
                yield Chunk(thinking, 0 if content else 1, at_s, reasoning=True)
            if content:
                yield Chunk(content, 1, at_s)
            self.tokens += 1
            self._last_reasoning = not content

    def _final(
        self, obj: dict[str, Any], text: str, reasoning: bool, at_s: float
    ) -> Iterator[Chunk]:
        self.done = True
        yield from self._flush(next_reasoning=reasoning)
        timings = timings_from_final(obj, chat=self.chat)
        tokens = 1 if text else 0
        reason = obj.get("done_reason")
        if not isinstance(reason, str) or not reason:
            limit = self.max_tokens
            reason = "length" if limit and (timings.output_tokens or 0) >= limit else "stop"
        if timings.output_tokens:
            shown = timings.output_tokens - (1 if reason == "stop" else 0)  # EOS: no text
            if self.max_tokens is not None:
                shown = min(shown, self.max_tokens)
            tokens = max(tokens, shown - self.tokens)
        self.tokens += tokens
        reasoning = reasoning or (self._last_reasoning and not text)
        yield Chunk(text, tokens, at_s, finish_reason=reason, timings=timings, reasoning=reasoning)

    def finish(self) -> None:
        if not self.done:
            tokens = self.tokens + len(self._pending)
            raise ProtocolError(f"the stream ended after {tokens} tokens, before `done: true`")


def chunks_from_objects(
    objects: Iterable[tuple[dict[str, Any], float]], *, chat: bool, max_tokens: int | None = None
) -> Iterator[Chunk]:
    """The Chunks of a whole stream of parsed objects; ProtocolError if it has no final one."""
    assembler = ChunkAssembler(chat=chat, max_tokens=max_tokens)
    for obj, at_s in objects:
        yield from assembler.add(obj, at_s)
    assembler.finish()
