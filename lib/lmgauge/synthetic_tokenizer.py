"""A real, deterministic byte-level BPE tokenizer for synthetic Qwen models.

llama.cpp and mlx-lm need a tokenizer that behaves like Qwen's: byte-level BPE with the
"qwen2" pre-tokenizer, the full vocabulary size and Qwen's special tokens at their real
ids. We train a small BPE (a few thousand merges) with the ``tokenizers`` library on
text generated here from a fixed seed (so the result never depends on the Python
version or on files of this machine), then pad the vocabulary with decodable filler
tokens (`` w12345``) up to the model's vocabulary size. A random-weight model emits
mostly filler ids; they decode to visible text, so every streamed token is non-empty.

The tokenizer depends only on the vocabulary size; it is cached as a ``tokenizer.json``
that mlx-lm and ``tokenizers`` load as is.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmgauge.errors import ConfigError

if TYPE_CHECKING:
    import gguf

TOKENIZER_VERSION = 1
"""Bump when the tokenizer's bytes change; part of its cache key."""

# Qwen2/Qwen2.5/Qwen3 added tokens and their real ids (the models' tokenizer.json).
QWEN_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = tuple(
    (151643 + i, text, text.startswith("<|"))
    for i, text in enumerate(
        (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        )
    )
)
"""(id, text, special): special tokens are control tokens; the others are user-defined."""
ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
MIN_VOCAB = QWEN_ADDED_TOKENS[-1][0] + 1

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The "qwen2" pre-tokenizer of llama.cpp, and the Split regex of Qwen's tokenizer.json.
QWEN2_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BPE_VOCAB = 4096  # 256 byte symbols + ~3,800 merges
_WORDS_TEXT = (
    "the of and to in is that for it as with was on be by this are at from or an have not "
    "which but all were when there can more one will has their if about so time model token "
    "memory speed bench server request cache layer weight value number data file system "
    "python return import class def self none true false print list dict string error test"
)
_WORDS = _WORDS_TEXT.split()
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


@dataclass(frozen=True)
class TokenizerData:
    """What a GGUF file stores of the tokenizer: tokens by id, their types, the merges."""

    path: Path  # the cached tokenizer.json
    tokens: list[str]
    token_types: list[int]  # gguf.TokenType values: 1 normal, 3 control, 4 user-defined
    merges: list[str]  # "left right", in merge order

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write the tokenizer keys llama.cpp reads (a "gpt2" BPE, the "qwen2" pre-tokenizer)."""
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        writer.add_bos_token_id(ENDOFTEXT_ID)
        writer.add_eos_token_id(IM_END_ID)
        writer.add_pad_token_id(ENDOFTEXT_ID)
        writer.add_add_bos_token(False)
        writer.add_chat_template(CHATML_TEMPLATE)


def _corpus(seed: int = 20240601, n_lines: int = 40_000) -> list[str]:
    """Deterministic text: English-ish words, pseudo-words, numbers, punctuation, code."""
    rng = random.Random(seed)
    pseudo = [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(6000)
    ]
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(pseudo))))
    lines = []
    for i in range(n_lines):
        n = rng.randint(4, 16)
        words = [
            rng.choice(_WORDS)
            if rng.random() < 0.4
            else rng.choices(pseudo, cum_weights=cum_weights)[0]
            for _ in range(n)
        ]
        if i % 5 == 0:
            lines.append(f"    {words[0]} = {words[1]}({words[2]}, {rng.randint(0, 9999)})\n")
        else:
            sentence = " ".join(words).capitalize()
            lines.append(sentence + rng.choice((".", ",", "!", "?", ":", ";")) + "\n")
    return lines


def _filler(token_id: int) -> str:
    return f"Ġw{token_id}"  # byte-level spelling of " w<id>"


def build_tokenizer_json(vocab_size: int) -> str:
    """Train the BPE and lay out the full vocabulary; returns tokenizer.json's text."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if vocab_size < MIN_VOCAB:
        raise ConfigError(
            f"synthetic tokenizer needs a vocabulary of at least {MIN_VOCAB} tokens to keep "
            f"Qwen's special tokens at their real ids; got {vocab_size}"
        )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.NFC()
    trainer_tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    trainer_tok.train_from_iterator(_corpus(), trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    learned_vocab: dict[str, int] = learned["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tokens = [""] * vocab_size
    for text, token_id in learned_vocab.items():
        tokens[token_id] = text
    for token_id, text, _ in QWEN_ADDED_TOKENS:
        tokens[token_id] = text
    for token_id in range(vocab_size):
        if not tokens[token_id]:
            tokens[token_id] = _filler(token_id)
    if len(set(tokens)) != vocab_size:
        raise AssertionError("synthetic tokenizer has duplicate tokens")  # a bug, not input

    # The added tokens must be in the model's vocab too, or tokenizers renumbers them.
    tokenizer = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)  # type: ignore[arg-type]
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_tokens(
        [
            AddedToken(text, special=special, normalized=False)
            for _, text, special in QWEN_ADDED_TOKENS
        ]
    )
    return tokenizer.to_str(pretty=False)


def tokenizer_data(vocab_size: int, cache: Path) -> TokenizerData:
    """The cached tokenizer of this vocabulary size, training it on first use (~seconds)."""
    path = cache / "tokenizer" / f"v{TOKENIZER_VERSION}-vocab{vocab_size}" / "tokenizer.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"tokenizer.json.partial.{os.getpid()}")
        partial.write_text(build_tokenizer_json(vocab_size), encoding="utf-8")
        os.replace(partial, path)
    model = json.loads(path.read_text(encoding="utf-8"))["model"]
    tokens = [""] * len(model["vocab"])
    for text, token_id in model["vocab"].items():
        tokens[token_id] = text
    types = [1] * len(tokens)
    for token_id, _, special in QWEN_ADDED_TOKENS:
        types[token_id] = 3 if special else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return TokenizerData(path, tokens, types, merges)
