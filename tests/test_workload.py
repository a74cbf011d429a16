"""Prompts of an exact token length."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgauge.workload import exact_prompt


def words_and_punctuation(text: str) -> int:
    return len(text.replace(".", " .").replace("!", " !").replace(",", " ,").split())


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 400), st.integers(0, 1000))
def test_exact_length_under_a_simple_tokenizer(n: int, seed: int) -> None:
    assert words_and_punctuation(exact_prompt(n, words_and_punctuation, seed=seed)) == n


def test_prompts_differ_from_their_first_word() -> None:
    first_words = {exact_prompt(64, words_and_punctuation, seed=s).split()[0] for s in range(20)}
    assert len(first_words) == 20


def test_every_prompt_starts_with_its_own_nonce_within_the_length() -> None:
    """A server's prompt cache reuses the longest common prefix of a prompt and any it has
    seen (Ollama's runner: cache_prompt hard-coded on, ollama/ollama fb30760
    llm/llama_server.go L1562): the same seed in another run, or a shuffle that happens to
    start with the same word, must still share nothing."""
    again = [exact_prompt(64, words_and_punctuation, seed=7) for _ in range(50)]
    assert len({prompt.split()[0] for prompt in again}) == 50
    assert all(words_and_punctuation(prompt) == 64 for prompt in again)
    assert {prompt.split(maxsplit=1)[1] for prompt in again} == {
        exact_prompt(63, words_and_punctuation, seed=7, nonce="")
    }  # after the nonce, the seed's words
    assert exact_prompt(3, words_and_punctuation, seed=7, nonce="n0nce").startswith("n0nce ")
    assert exact_prompt(1, lambda text: len(text), seed=7, nonce="long") != "long"  # too long


def test_an_impossible_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="could not build a prompt of exactly 5 tokens"):
        exact_prompt(5, lambda text: 2 * len(text.split()), seed=0)
    with pytest.raises(ValueError, match="at least 1 token"):
        exact_prompt(0, len)
