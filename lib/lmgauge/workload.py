"""Prompts of an exact token length, distinct per sample.

Prefill speed is only comparable between runs when the prompt length is exact, and only
real when no prompt cache serves it. A server's prompt cache reuses the longest common
prefix of a new prompt and one it has seen (llama-server, which Ollama runs with
``cache_prompt`` hard-coded on; mlx_lm.server), across requests and across runs while the
server stays up. So every prompt starts with a nonce no other prompt shares, counted in its
exact length, and then the seed's shuffle of the words.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable

WORDS = (
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "foot",
    "boy",
    "age",
    "policy",
    "process",
    "music",
    "market",
    "sense",
    "nation",
    "plan",
    "college",
    "interest",
    "death",
    "experience",
    "effect",
    "use",
    "class",
    "control",
    "care",
    "field",
    "development",
    "role",
    "effort",
    "rate",
    "heart",
)


def new_nonce() -> str:
    """Six random hex digits, fresh at every call: random rather than counted, so that two
    prompts seldom share even the nonce's first token, and no run repeats another's."""
    return secrets.token_hex(3)


def exact_prompt(
    n_tokens: int,
    count_tokens: Callable[[str], int],
    *,
    seed: int = 0,
    nonce: str | None = None,
) -> str:
    """A prompt of exactly ``n_tokens`` tokens as ``count_tokens`` counts them, starting
    with ``nonce`` (None: a fresh one; "": none). A nonce longer than the whole prompt is
    left out.

    Raises ValueError if the tokenizer cannot be brought to that length exactly.
    """
    if n_tokens < 1:
        raise ValueError(f"a prompt needs at least 1 token, got {n_tokens}")
    head = new_nonce() if nonce is None else nonce
    if head and count_tokens(head) > n_tokens:
        head = ""
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < n_tokens:
        batch = list(WORDS)
        rng.shuffle(batch)
        words.extend(batch)

    def text(k: int) -> str:
        return " ".join([head, *words[:k]] if head else words[:k])

    low, high = (0 if head else 1), n_tokens  # every word is at least one token
    while low < high:  # the most words that stay within n_tokens
        middle = (low + high + 1) // 2
        if count_tokens(text(middle)) <= n_tokens:
            low = middle
        else:
            high = middle - 1
    prompt = text(low)
    count = count_tokens(prompt)
    if count > n_tokens:  # even one word is too long: build from punctuation alone
        prompt, count = "", 0
    while count < n_tokens:  # pad with whatever adds tokens without overshooting
        for suffix in (" .", ".", " the", "!", " a", ","):
            longer = count_tokens(prompt + suffix)
            if count < longer <= n_tokens:
                prompt, count = prompt + suffix, longer
                break
        else:
            break
    if count != n_tokens:
        raise ValueError(
            f"could not build a prompt of exactly {n_tokens} tokens with this "
            f"tokenizer (got {count})"
        )
    return prompt
