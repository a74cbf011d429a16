"""The bytes of each streamed event, OpenAI SSE or Ollama NDJSON, one token per event.

Every event of a request shares its prefix and suffix, so a token costs a concatenation,
not a JSON encoding: the server must stay cheap to keep its schedule at tens of
thousands of tokens a second. The shapes follow llama-server / OpenAI (``data: {...}``,
a closing event with ``finish_reason``, a usage event when ``stream_options.include_usage``,
``data: [DONE]``) and Ollama docs/api.md (``done: false`` objects, then ``done: true`` with
``done_reason`` and durations in ns).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

WORDS: tuple[str, ...] = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy")
WORDS += (" dog", ",", " déjà", " 天空", "\n", " ☀", "\u0085")  # U+0085: raw, as Go leaves it


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


WORD_JSON = tuple(_json(word) for word in WORDS)


def word(k: int) -> str:
    return WORDS[k % len(WORDS)]


class Encoder:
    """The events of one streamed answer."""

    content_type = "text/event-stream"

    def __init__(self, request_id: str, model: str, prompt_tokens: int) -> None:
        self.request_id, self.model, self.prompt_tokens = request_id, model, prompt_tokens
        self._prefix, self._suffix = b"", b""

    def token(self, k: int) -> bytes:
        return self._prefix + WORD_JSON[k % len(WORD_JSON)] + self._suffix

    def malformed(self) -> bytes:
        return b"data: {not json\n\n"

    def end(self, tokens: int, finish_reason: str, timings: dict[str, float]) -> bytes:
        raise NotImplementedError


class OpenAIEncoder(Encoder):
    def __init__(
        self, request_id: str, model: str, prompt_tokens: int, *, chat: bool, usage: bool
    ) -> None:
        super().__init__(request_id, model, prompt_tokens)
        self.chat, self.usage = chat, usage
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._head = {"id": request_id, "object": kind, "created": int(time.time()), "model": model}
        head = b"data: " + _json(self._head)[:-1]
        if chat:
            self._prefix = head + b',"choices":[{"index":0,"delta":{"content":'
            self._suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._prefix = head + b',"choices":[{"index":0,"text":'
            self._suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def token(self, k: int) -> bytes:
        if k == 0 and self.chat:  # the role goes with the first token
            data = self._prefix.replace(b'"delta":{', b'"delta":{"role":"assistant",')
            return data + WORD_JSON[0] + self._suffix
        return super().token(k)

    def end(self, tokens: int, finish_reason: str, timings: dict[str, float]) -> bytes:
        last: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.chat:
            last["delta"] = {}
        else:
            last["text"] = ""
        events = [{**self._head, "choices": [last]}]
        if self.usage:
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": self.prompt_tokens + tokens,
            }
            events.append({**self._head, "choices": [], "usage": usage})
        return b"".join(b"data: " + _json(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class OllamaEncoder(Encoder):
    content_type = "application/x-ndjson"

    def __init__(self, request_id: str, model: str, prompt_tokens: int, *, chat: bool) -> None:
        super().__init__(request_id, model, prompt_tokens)
        self.chat = chat
        created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._head = {"model": model, "created_at": created}
        head = _json(self._head)[:-1]
        if chat:
            self._prefix = head + b',"message":{"role":"assistant","content":'
            self._suffix = b'},"done":false}\n'
        else:
            self._prefix, self._suffix = head + b',"response":', b',"done":false}\n'

    def malformed(self) -> bytes:
        return b'{"model":"' + self.model.encode() + b'","response":\n'

    def final(self, **fields: Any) -> dict[str, Any]:
        text = {"message": {"role": "assistant", "content": ""}} if self.chat else {"response": ""}
        return {**self._head, **text, "done": True, **fields}

    def end(self, tokens: int, finish_reason: str, timings: dict[str, float]) -> bytes:
        """``timings``: received, loaded, first and last token, end (perf_counter seconds)."""
        durations = {
            "total_duration": _ns(timings["end"] - timings["received"]),
            "load_duration": _ns(timings["loaded"] - timings["received"]),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": _ns(timings["first"] - timings["loaded"]),
            "eval_count": tokens,
            "eval_duration": _ns(timings["last"] - timings["first"]),
        }
        kept = {key: value for key, value in durations.items() if value}  # Go's omitempty
        return _json(self.final(done_reason=finish_reason, **kept)) + b"\n"
