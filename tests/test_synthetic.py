"""Synthetic GGUF models: real shapes, a real tokenizer, llama.cpp loads them.

Tiny architectures (2 layers, hidden 64) keep this fast; the vocabulary is the real
one, since that is what makes the tokenizer real.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psutil
import pytest

from lmgauge import synthetic_write
from lmgauge.catalog import Architecture
from lmgauge.errors import ConfigError, UnknownModelError, UnknownQuantizationError

gguf = pytest.importorskip("gguf", reason="synthetic models need the gguf package")
pytest.importorskip("tokenizers", reason="synthetic models need the tokenizers package")

from lmgauge.synthetic import (  # noqa: E402  (after the skips)
    InsufficientResourcesError,
    cache_dir,
    is_complete,
    model_dir,
    synthetic_gguf,
)
from lmgauge.synthetic_tokenizer import ENDOFTEXT_ID, IM_END_ID, IM_START_ID  # noqa: E402

FAMILIES = ("qwen3", "qwen3moe", "qwen2")


def tiny(family: str, name: str | None = None) -> Architecture:
    return Architecture(
        name=name or f"Tiny-{family}",
        gguf_arch=family,  # type: ignore[arg-type]
        n_layers=2,
        hidden_size=64,
        intermediate_size=128,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        vocab_size=152064 if family == "qwen2" else 151936,
        tied_embeddings=family == "qwen3",
        native_context=4096,
        max_context=8192,
        published_params=0.0,
        n_experts=4 if family == "qwen3moe" else 0,
        n_active_experts=2 if family == "qwen3moe" else 0,
        qkv_bias=family == "qwen2",
        qk_norm=family != "qwen2",
    )


class Built(NamedTuple):
    cache: Path
    f16: dict[str, Path]
    readers: dict[str, Any]  # GGUFReader per family; opening one takes seconds (the vocab)

    def reader(self, family: str) -> Any:
        if family not in self.readers:
            self.readers[family] = gguf.GGUFReader(self.f16[family])
        return self.readers[family]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    cache = tmp_path_factory.mktemp("synthetic-cache")
    return Built(cache, {f: synthetic_gguf(tiny(f), "F16", cache=cache) for f in FAMILIES}, {})


@pytest.fixture
def cache(tmp_path: Path, built: Built) -> Path:
    """A fresh cache that already holds the trained tokenizers (they take seconds)."""
    shutil.copytree(built.cache / "tokenizer", tmp_path / "tokenizer")
    return tmp_path


def copy_built(built: Built, family: str, cache: Path) -> Path:
    """Put the module's F16 file of a family into another cache; returns its new path."""
    directory = model_dir(tiny(family), cache)
    shutil.copytree(built.f16[family].parent, directory, dirs_exist_ok=True)
    return directory / built.f16[family].name


def field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


@pytest.mark.parametrize("family", FAMILIES)
def test_header_has_the_architecture_keys_and_tokenizer(built: Built, family: str) -> None:
    arch = tiny(family)
    reader = built.reader(family)
    assert field(reader, "general.architecture") == family
    expected = {
        "context_length": 4096,
        "embedding_length": 64,
        "block_count": 2,
        "feed_forward_length": 128,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "attention.key_length": 16,
        "attention.value_length": 16,
    }
    if family == "qwen3moe":
        expected |= {"expert_count": 4, "expert_used_count": 2, "expert_feed_forward_length": 128}
    assert {k: field(reader, f"{family}.{k}") for k in expected} == expected
    assert field(reader, f"{family}.rope.freq_base") == pytest.approx(1e6)
    assert field(reader, f"{family}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "qwen2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == arch.vocab_size == len(field(reader, "tokenizer.ggml.token_type"))
    assert tokens[ENDOFTEXT_ID] == "<|endoftext|>"
    assert tokens[IM_START_ID] == "<|im_start|>"
    assert tokens[IM_END_ID] == "<|im_end|>"
    assert len(field(reader, "tokenizer.ggml.merges")) > 2000
    assert field(reader, "tokenizer.ggml.eos_token_id") == IM_END_ID
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>" in field(reader, "tokenizer.chat_template")


@pytest.mark.parametrize("family", FAMILIES)
def test_tensor_shapes_and_parameter_count_match_the_catalog(built: Built, family: str) -> None:
    arch = tiny(family)
    tensors = {t.name: [int(d) for d in t.shape] for t in built.reader(family).tensors}
    # GGUF lists dimensions innermost first: (in, out) for a Hugging Face (out, in) matrix.
    assert tensors["token_embd.weight"] == [64, arch.vocab_size]
    assert tensors["blk.1.attn_q.weight"] == [64, 4 * 16]
    assert tensors["blk.1.attn_k.weight"] == [64, 2 * 16]
    assert tensors["blk.1.attn_output.weight"] == [4 * 16, 64]
    assert ("output.weight" in tensors) is (not arch.tied_embeddings)
    assert ("blk.0.attn_q_norm.weight" in tensors) is arch.qk_norm
    assert ("blk.0.attn_k.bias" in tensors) is arch.qkv_bias
    if family == "qwen3moe":
        assert tensors["blk.0.ffn_gate_inp.weight"] == [64, 4]
        assert tensors["blk.0.ffn_gate_exps.weight"] == [64, 128, 4]
        assert tensors["blk.0.ffn_down_exps.weight"] == [128, 64, 4]
        assert "blk.0.ffn_gate.weight" not in tensors
    else:
        assert tensors["blk.0.ffn_down.weight"] == [128, 64]
    assert sum(int(np.prod(shape)) for shape in tensors.values()) == arch.total_params


def test_weights_are_deterministic_per_seed(cache: Path, built: Built) -> None:
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    again = synthetic_gguf(tiny("qwen3"), "F16", cache=cache)
    other_seed = synthetic_gguf(tiny("qwen3"), "F16", cache=cache, seed=1)
    assert digest(again) == digest(built.f16["qwen3"])
    assert digest(other_seed) != digest(again)
    weights = {t.name: np.asarray(t.data) for t in built.reader("qwen3").tensors}
    assert np.all(weights["output_norm.weight"] == 1.0)
    assert weights["blk.0.attn_q.weight"].dtype == np.float16
    assert 0.015 < float(np.std(weights["blk.0.ffn_up.weight"].astype(np.float32))) < 0.025
    assert not np.array_equal(weights["blk.0.ffn_up.weight"], weights["blk.1.ffn_up.weight"])


@pytest.mark.parametrize(("quant", "file_type"), [("Q8_0", 7), ("Q4_K_M", 15)])
def test_quantized_model_loads_and_generates(
    cache: Path, built: Built, quant: str, file_type: int
) -> None:
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install 'lmgauge[llamacpp]')"
    )
    copy_built(built, "qwen3", cache)
    stages: list[tuple[str, float]] = []
    path = synthetic_gguf(
        tiny("qwen3"), quant, cache=cache, progress=lambda s, f: stages.append((s, f))
    )
    assert [s for s, _ in stages] == [f"write {quant}"] * len(stages)  # no F16, no quantizer
    assert stages[0][1] == 0.0
    assert stages[-1][1] == 1.0
    assert path.stat().st_size < built.f16["qwen3"].stat().st_size
    reader = gguf.GGUFReader(path)
    for tensor in reader.tensors:  # every weight dequantizes to finite, N(0, ~0.02)-like values
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.isfinite(values).all(), tensor.name
        if tensor.name.endswith(("_q.weight", "ffn_up.weight")):
            assert 0.01 < float(values.std()) < 0.04, (tensor.name, float(values.std()))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    try:
        assert llm.metadata["general.file_type"] == str(file_type)
        banned = {IM_END_ID: -1e9, ENDOFTEXT_ID: -1e9}
        out = llm("Hello there", max_tokens=12, temperature=0.0, logit_bias=banned)
    finally:
        llm.close()
    assert out["usage"]["completion_tokens"] == 12
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["text"].strip()


def test_cached_file_is_reused_and_a_truncated_one_rebuilt(cache: Path) -> None:
    arch = tiny("qwen2")
    path = synthetic_gguf(arch, "F16", cache=cache)
    assert path.name == "Tiny-qwen2-F16.gguf"
    assert path.parent == model_dir(arch, cache)
    assert path.parent.parent.parent == cache
    assert (path.parent / "tokenizer.json").is_file()
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    assert synthetic_gguf(arch, "F16", cache=cache) == path
    assert path.stat().st_mtime_ns == mtime

    with path.open("r+b") as f:
        f.truncate(size // 2)
    assert not is_complete(path)
    assert synthetic_gguf(arch, "F16", cache=cache) == path
    assert path.stat().st_size == size
    assert is_complete(path)


def test_a_crashed_build_leaves_nothing_that_looks_complete(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arch = tiny("qwen3")
    calls = 0
    real_write = synthetic_write._write_data

    def crash_midway(*args: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return real_write(*args)

    monkeypatch.setattr(synthetic_write, "_write_data", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        synthetic_gguf(arch, "F16", cache=cache)
    final = model_dir(arch, cache) / "Tiny-qwen3-F16.gguf"
    assert not final.exists()
    assert not is_complete(final)
    monkeypatch.setattr(synthetic_write, "_write_data", real_write)
    assert synthetic_gguf(arch, "F16", cache=cache) == final
    assert is_complete(final)
    assert not final.with_name(final.name + ".partial").exists()


def test_a_file_without_its_sidecar_is_rebuilt(cache: Path, built: Built) -> None:
    path = copy_built(built, "qwen3", cache)
    assert synthetic_gguf(tiny("qwen3"), "F16", cache=cache) == path
    path.with_name(path.name + ".json").unlink()
    assert not is_complete(path)
    synthetic_gguf(tiny("qwen3"), "F16", cache=cache)
    assert is_complete(path)


def test_too_little_disk_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 123_456)
    )
    with pytest.raises(InsufficientResourcesError) as caught:
        synthetic_gguf(tiny("qwen3"), "Q4_K_M", cache=tmp_path)
    message = str(caught.value)
    assert "Tiny-qwen3" in message
    assert "123,456 bytes" in message
    needed = int(message.split("needs ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > tiny("qwen3").total_params * 2  # the F16 file alone
    assert "LMGAUGE_CACHE_DIR" in message
    assert list(tmp_path.iterdir()) == []


def test_too_little_memory_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Memory:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    with pytest.raises(InsufficientResourcesError, match=r"memory .* 1,000 bytes"):
        synthetic_gguf(tiny("qwen3"), "Q8_0", cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quant", ["4bit", "8bit", "bf16"])
def test_mlx_quantizations_are_refused(tmp_path: Path, quant: str) -> None:
    with pytest.raises(ConfigError, match="GGUF only"):
        synthetic_gguf(tiny("qwen3"), quant, cache=tmp_path)


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError):
        synthetic_gguf("qwen3-9b", cache=tmp_path)
    with pytest.raises(UnknownQuantizationError):
        synthetic_gguf(tiny("qwen3"), "Q2_K", cache=tmp_path)


def test_the_tokenizer_json_loads_and_keeps_the_special_ids(built: Built) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(built.f16["qwen3"].parent / "tokenizer.json"))
    assert tok.get_vocab_size() == 151936
    ids = tok.encode("<|im_start|>user\nHello, world!<|im_end|>").ids
    assert ids[0] == IM_START_ID
    assert ids[-1] == IM_END_ID
    assert tok.decode(ids[1:-1]) == "user\nHello, world!"
    assert tok.decode([100_000]) == " w100000"  # a filler id decodes to visible text


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMGAUGE_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path / "models"
    monkeypatch.delenv("LMGAUGE_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "lmgauge" / "models"


def test_default_progress_logs_when_stderr_is_not_a_terminal(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lmgauge.synthetic")
    synthetic_gguf(tiny("qwen3moe"), "F16", cache=cache)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "synthetic Tiny-qwen3moe F16: write F16 0%"
    assert messages[-1] == "synthetic Tiny-qwen3moe F16: write F16 100%"
    assert len(messages) <= 6


_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def tensor_infos(path: Path) -> tuple[int, list[tuple[str, tuple[int, ...], int]]]:
    """A GGUF's file type and (name, dims, ggml type) of each tensor, read from its header
    alone (gguf.GGUFReader reads every vocabulary array too: seconds per file)."""
    with path.open("rb") as f:
        data = f.read(64 * 1024**2)
    pos = 24  # magic, version, tensor count, key count
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def take(fmt: str) -> Any:
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values[0]

    def text() -> str:
        nonlocal pos
        length = take("<Q")
        pos += length
        return data[pos - length : pos].decode()

    def skip(kind: int) -> None:
        nonlocal pos
        if kind == 8:
            text()
        elif kind == 9:
            item, count = take("<I"), take("<Q")
            if item in _SCALAR_BYTES:
                pos += _SCALAR_BYTES[item] * count
            else:
                for _ in range(count):
                    skip(item)
        else:
            pos += _SCALAR_BYTES[kind]

    file_type = -1
    for _ in range(n_kv):
        key, kind = text(), take("<I")
        if key == "general.file_type":
            file_type = take("<I")
        else:
            skip(kind)
    tensors = []
    for _ in range(n_tensors):
        name = text()
        dims = tuple(take("<Q") for _ in range(take("<I")))
        tensors.append((name, dims, take("<I")))
        take("<Q")  # offset
    return file_type, tensors


# Every file type on the untied qwen2 shape (output.weight has its own rule); on tied qwen3
# (the embedding takes the output's rule) and qwen3moe (3-D experts, the layer read from
# the name), the K-quant mixes.
IDENTITY_CASES = [("qwen2", q) for q in ("Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M")] + [
    ("qwen2", "Q6_K"),
    ("qwen2", "Q8_0"),
    ("qwen3", "Q4_K_M"),
    ("qwen3", "Q6_K"),
    ("qwen3moe", "Q4_K_M"),
    ("qwen3moe", "Q3_K_M"),
]


@pytest.fixture(scope="module")
def shared_cache(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for all identity cases: the quantizer's F16 input is built once a family."""
    cache = tmp_path_factory.mktemp("identity-cache")
    shutil.copytree(built.cache / "tokenizer", cache / "tokenizer")
    return cache


@pytest.mark.parametrize(("family", "quant"), IDENTITY_CASES)
def test_direct_files_have_the_quantizers_tensor_types_and_size(
    shared_cache: Path, family: str, quant: str
) -> None:
    """The file written block by block against the one llama.cpp's quantizer makes from F16:
    the same type for every tensor (the tiny shapes' 64-wide rows also take the quantizer's
    fallbacks: Q4_K to Q5_0 and so on) and the same size. scripts/synthetic_identity.py
    does the same for the real 0.6B and 7B shapes, with their speed."""
    pytest.importorskip("llama_cpp", reason="the reference needs llama.cpp's quantizer")
    arch = replace(tiny(family), n_layers=9)  # enough layers for use_more_bits' pattern
    direct = synthetic_gguf(arch, quant, cache=shared_cache)
    made = synthetic_gguf(arch, quant, cache=shared_cache, builder="llama-quantize")
    assert tensor_infos(direct) == tensor_infos(made)
    assert direct.stat().st_size == made.stat().st_size
