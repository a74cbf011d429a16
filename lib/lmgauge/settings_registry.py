"""Which server settings exist, per backend: the real ones with their types, and the names
the planning documents use that are not settings (removed, renamed, or never real).

Sources, checked upstream: Ollama envconfig/config.go and api/types.go (v0.33; the lines
cited are ollama/ollama@fb30760); LM Studio's REST load API (lmstudio-ai/docs@c6854fb
1_developer/2_rest/load.md) and the `lms` CLI; mlx-lm 0.32 mlx_lm/server.py and
generate.py; llama-cpp-python 0.3 ``Llama(...)`` parameters.

A setting lives in one section of a config file: ``server`` (the server process's
environment or flags, fixed when it starts), ``load`` (applied when a model is loaded) or
``options`` (sent with every request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Section = Literal["server", "load", "options"]
Kind = Literal["int", "float", "bool", "str", "duration", "bool01", "boolint", "strlist"]
"""``bool01``: 0/1/true/false; ``boolint``: what Go's strconv.ParseBool reads, or any
integer; ``strlist``: a list of strings."""


@dataclass(frozen=True)
class Setting:
    name: str
    section: Section
    kind: Kind
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    default: str | None = None
    load_field: str | None = None  # the LoadSettings field it becomes, where it is one


@dataclass(frozen=True)
class NotASetting:
    name: str
    fix: str  # what to use instead, or why there is nothing
    removed_in: str | None = None  # the release that removed it, where it once existed


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


def _not(*items: NotASetting) -> dict[str, NotASetting]:
    return {n.name: n for n in items}


OLLAMA_ENV = "Ollama server environment variable (envconfig/config.go)"
OLLAMA = _settings(
    Setting("OLLAMA_HOST", "server", "str", default="127.0.0.1:11434"),
    Setting("OLLAMA_ORIGINS", "server", "str"),
    Setting("OLLAMA_MODELS", "server", "str", default="~/.ollama/models"),
    Setting("OLLAMA_KEEP_ALIVE", "server", "duration", default="5m"),
    Setting("OLLAMA_LOAD_TIMEOUT", "server", "duration", default="5m"),
    # config.go@fb30760 L201-212: ParseBool (true: debug), else ParseInt (level i*-4).
    Setting("OLLAMA_DEBUG", "server", "boolint", default="0"),
    Setting("OLLAMA_DEBUG_LOG_REQUESTS", "server", "bool01"),
    Setting("OLLAMA_FLASH_ATTENTION", "server", "bool01", default=None),
    Setting(
        "OLLAMA_KV_CACHE_TYPE", "server", "str", choices=("f16", "q8_0", "q4_0"), default="f16"
    ),
    Setting("OLLAMA_CONTEXT_LENGTH", "server", "int", minimum=0, default="0"),
    Setting("OLLAMA_NUM_PARALLEL", "server", "int", minimum=1, default="1"),
    Setting("OLLAMA_MAX_LOADED_MODELS", "server", "int", minimum=0, default="0"),
    Setting("OLLAMA_MAX_QUEUE", "server", "int", minimum=1, default="512"),
    Setting("OLLAMA_MAX_TRANSFER_STREAMS", "server", "int", minimum=1, default="4"),  # L285
    Setting("OLLAMA_GPU_OVERHEAD", "server", "int", minimum=0, default="0"),
    Setting("OLLAMA_SCHED_SPREAD", "server", "bool01"),
    Setting("OLLAMA_NOPRUNE", "server", "bool01"),
    Setting("OLLAMA_NOHISTORY", "server", "bool01"),
    Setting("OLLAMA_AUTH", "server", "bool01"),
    Setting("OLLAMA_NO_CLOUD", "server", "bool01"),
    Setting("OLLAMA_GO_TEMPLATE", "server", "bool01", default="true"),  # L218, AsMap L315
    Setting("OLLAMA_REMOTES", "server", "str"),
    Setting("OLLAMA_LLM_LIBRARY", "server", "str"),
    Setting("OLLAMA_EDITOR", "server", "str"),
    Setting("OLLAMA_IGPU_ENABLE", "server", "bool01"),
    Setting("OLLAMA_VULKAN", "server", "bool01"),
    # GPU selection variables Ollama reads in its GPU discovery (config.go L251-256, AsMap
    # L353-360).
    Setting("CUDA_VISIBLE_DEVICES", "server", "str"),
    Setting("HIP_VISIBLE_DEVICES", "server", "str"),
    Setting("ROCR_VISIBLE_DEVICES", "server", "str"),
    Setting("GPU_DEVICE_ORDINAL", "server", "str"),
    Setting("GGML_VK_VISIBLE_DEVICES", "server", "str"),
    Setting("HSA_OVERRIDE_GFX_VERSION", "server", "str"),
    # llama.cpp's automatic fit of memory options ("on" by default; AsMap L320-321).
    Setting("LLAMA_ARG_FIT", "server", "str"),
    Setting("LLAMA_ARG_FIT_TARGET", "server", "str"),
    # Proxies, "informational" in AsMap (L340-351; the lower-case ones off Windows).
    Setting("HTTP_PROXY", "server", "str"),
    Setting("HTTPS_PROXY", "server", "str"),
    Setting("NO_PROXY", "server", "str"),
    Setting("http_proxy", "server", "str"),
    Setting("https_proxy", "server", "str"),
    Setting("no_proxy", "server", "str"),
    # Model options (api/types.go): the runner's, applied at load...
    Setting("num_ctx", "load", "int", minimum=1, default="auto", load_field="context_tokens"),
    Setting("num_batch", "load", "int", minimum=1, default="512", load_field="batch_tokens"),
    Setting("num_gpu", "load", "int", minimum=-1, default="-1"),
    Setting("main_gpu", "load", "int", minimum=0),
    Setting("use_mmap", "load", "bool", load_field="use_mmap"),
    Setting("num_thread", "load", "int", minimum=0, default="0", load_field="threads"),
    # api/types.go@fb30760 L595, DefaultOptions L1119 (routes.go sets 0 without a draft).
    Setting("draft_num_predict", "load", "int", minimum=0, default="4"),
    # ...and sampling, per request.
    Setting("num_keep", "options", "int"),
    Setting("seed", "options", "int"),
    Setting("num_predict", "options", "int", minimum=-2),
    Setting("top_k", "options", "int", minimum=0),
    Setting("top_p", "options", "float", minimum=0),
    Setting("min_p", "options", "float", minimum=0),
    Setting("typical_p", "options", "float", minimum=0),
    Setting("repeat_last_n", "options", "int", minimum=-1),
    Setting("temperature", "options", "float", minimum=0),
    Setting("repeat_penalty", "options", "float", minimum=0),
    Setting("presence_penalty", "options", "float"),
    Setting("frequency_penalty", "options", "float"),
    Setting("stop", "options", "strlist"),  # Stop []string (api/types.go L584)
)
OLLAMA_NOT = _not(
    NotASetting("OLLAMA_MAX_VRAM", "Ollama now measures GPU memory itself", "v0.7.0"),
    NotASetting("OLLAMA_CPU_TARGET", "it was a build variable, never a server setting"),
    NotASetting("OLLAMA_NUMA", "NUMA is a llama.cpp option Ollama does not expose"),
    NotASetting("OLLAMA_VERBOSE", "logging is OLLAMA_DEBUG (0/false, 1/true or 2)"),
    NotASetting("OLLAMA_CPU_THREADS", "threads are the `num_thread` model option"),
    NotASetting("OLLAMA_NUM_THREADS", "threads are the `num_thread` model option"),
    NotASetting("OLLAMA_MMAP", "memory mapping is the `use_mmap` model option"),
    NotASetting("OLLAMA_MLOCK", "use_mlock was removed from Ollama in v0.7.0; nothing replaces it"),
    NotASetting("OLLAMA_BATCH_SIZE", "the batch size is the `num_batch` model option"),
    NotASetting("OLLAMA_CONTEXT_SIZE", "the default context is OLLAMA_CONTEXT_LENGTH"),
    NotASetting("OLLAMA_ROPE_FREQ_BASE", "RoPE scaling comes from the model file"),
    NotASetting("OLLAMA_ROPE_FREQ_SCALE", "RoPE scaling comes from the model file"),
    NotASetting("OLLAMA_NUM_GPU", "GPU offload is the `num_gpu` model option"),
    NotASetting("OLLAMA_NUMA_POLICY", "Ollama has no NUMA setting"),
    NotASetting("numa", "Ollama has no NUMA option any more", "v0.3.4"),
    NotASetting("tfs_z", "tail-free sampling is gone", "v0.5.2"),
    NotASetting("penalize_newline", "there is no replacement", "v0.5.5"),
    NotASetting("low_vram", "Ollama sizes GPU memory itself", "v0.7.0"),
    NotASetting("f16_kv", "the KV cache type is OLLAMA_KV_CACHE_TYPE", "v0.7.0"),
    NotASetting("logits_all", "there is no replacement", "v0.7.0"),
    NotASetting("vocab_only", "there is no replacement", "v0.7.0"),
    NotASetting("use_mlock", "there is no replacement", "v0.7.0"),
    NotASetting("mirostat", "Mirostat sampling is gone", "v0.7.0"),
    NotASetting("mirostat_tau", "Mirostat sampling is gone", "v0.7.0"),
    NotASetting("mirostat_eta", "Mirostat sampling is gone", "v0.7.0"),
    NotASetting(
        "memory_limit",
        "Ollama has no memory limit; OLLAMA_MAX_LOADED_MODELS and OLLAMA_GPU_OVERHEAD shape "
        "its memory use",
    ),
)

NOT_OVER_REST = "not settable over LM Studio's REST load; set it in the app's per-model defaults"
LMSTUDIO = _settings(
    # `lms server start --port N --cors`
    Setting("port", "server", "int", minimum=1, default="1234"),
    Setting("cors", "server", "bool"),
    # The body of POST /api/v1/models/load, by its names (lmstudio-ai/docs@c6854fb
    # 1_developer/2_rest/load.md L13-43); defaults as lmstudio-js@6ec11db
    # packages/lms-kv-config/src/schema.ts (evalBatchSize L354, offloadKVCacheToGpu L328).
    Setting("context_length", "load", "int", minimum=1, load_field="context_tokens"),
    Setting("eval_batch_size", "load", "int", minimum=1, default="2048"),
    Setting("flash_attention", "load", "bool", load_field="flash_attention"),
    Setting("num_experts", "load", "int", minimum=0),
    Setting("offload_kv_cache_to_gpu", "load", "bool", default="true"),
    Setting("temperature", "options", "float", minimum=0),
    Setting("top_p", "options", "float", minimum=0),
    Setting("top_k", "options", "int", minimum=0),
    Setting("presence_penalty", "options", "float"),
    Setting("frequency_penalty", "options", "float"),
    Setting("seed", "options", "int"),
)
GPU_FLAG = "`lms load --gpu 0-1|max|off` before the run"
LMSTUDIO_NOT = _not(
    # lmstudio-js names (LLMLoadModelConfig, KV config keys): the REST load takes none.
    NotASetting("contextLength", "the REST load field is `context_length`"),
    NotASetting("flashAttention", "the REST load field is `flash_attention`"),
    NotASetting("evalBatchSize", "the REST load field is `eval_batch_size`"),
    NotASetting("numExperts", "the REST load field is `num_experts`"),
    NotASetting("offloadKVCacheToGpu", "the REST load field is `offload_kv_cache_to_gpu`"),
    NotASetting("llama.cpuThreadPoolSize", NOT_OVER_REST),
    NotASetting("numParallelSessions", f"{NOT_OVER_REST} (LM Studio runs 4 parallel predictions)"),
    NotASetting("tryMmap", NOT_OVER_REST),
    NotASetting("llama.tryMmap", NOT_OVER_REST),
    NotASetting("keepModelInMemory", NOT_OVER_REST),
    NotASetting("llama.keepModelInMemory", NOT_OVER_REST),
    NotASetting("useFp16ForKVCache", NOT_OVER_REST),
    NotASetting("llama.useFp16ForKVCache", NOT_OVER_REST),
    NotASetting("ropeFrequencyBase", NOT_OVER_REST),
    NotASetting("ropeFrequencyScale", NOT_OVER_REST),
    NotASetting("llama.kCacheQuantizationType", NOT_OVER_REST),
    NotASetting("llama.vCacheQuantizationType", NOT_OVER_REST),
    NotASetting("llamaKCacheQuantizationType", NOT_OVER_REST),
    NotASetting("llamaVCacheQuantizationType", NOT_OVER_REST),
    NotASetting("gpu", f"not settable over LM Studio's REST load; use {GPU_FLAG}"),
    NotASetting("ttl", "not settable over LM Studio's REST load; use `lms load --ttl SECONDS`"),
    # The planning documents' names.
    NotASetting("batch_size", "the REST load field is `eval_batch_size`"),
    NotASetting(
        "threads", f"LM Studio's CPU threads (llama.cpuThreadPoolSize) are {NOT_OVER_REST}"
    ),
    NotASetting("rope_freq_base", f"RoPE scaling (ropeFrequencyBase) is {NOT_OVER_REST}"),
    NotASetting("rope_freq_scale", f"RoPE scaling (ropeFrequencyScale) is {NOT_OVER_REST}"),
    NotASetting("gpu_layers", f"GPU offload is not settable over REST; use {GPU_FLAG}"),
    NotASetting("n_gpu_layers", f"GPU offload is not settable over REST; use {GPU_FLAG}"),
    NotASetting("mmap", f"memory mapping (tryMmap) is {NOT_OVER_REST}"),
    NotASetting("use_mmap", f"memory mapping (tryMmap) is {NOT_OVER_REST}"),
    NotASetting("f16_kv", f"the KV cache precision (useFp16ForKVCache) is {NOT_OVER_REST}"),
    NotASetting("mlock", f"the closest setting (keepModelInMemory) is {NOT_OVER_REST}"),
    NotASetting("use_mlock", f"the closest setting (keepModelInMemory) is {NOT_OVER_REST}"),
    NotASetting(
        "max_requests", f"parallel predictions (numParallelSessions, 4) are {NOT_OVER_REST}"
    ),
    NotASetting(
        "keep_alive_timeout", "LM Studio unloads idle models after their TTL (`lms load --ttl`)"
    ),
    NotASetting("group_attention", "LM Studio has no such setting"),
    NotASetting("sliding_window", "the window comes from the model; LM Studio has no setting"),
    NotASetting(
        "kv_cache_compression",
        "the real settings quantize the cache (llama.kCacheQuantizationType and "
        f"llama.vCacheQuantizationType), {NOT_OVER_REST}",
    ),
    NotASetting("numa", "LM Studio has no NUMA setting"),
    NotASetting("low_vram", f"LM Studio has no such setting; lower the GPU offload: {GPU_FLAG}"),
    NotASetting("logits_all", "LM Studio has no such setting"),
    NotASetting("vocab_only", "LM Studio has no such setting"),
    NotASetting("embedding", "embedding models are a model type, not a load setting"),
    NotASetting("main_gpu", f"the main GPU (gpu.mainGpu) is {NOT_OVER_REST}"),
    NotASetting("tensor_split", f"GPU splitting (gpu.splitStrategy) is {NOT_OVER_REST}"),
    NotASetting("tensor_parallel", "LM Studio has no such setting"),
    NotASetting("quantization", "the quantization is the model file you load: [gate]"),
    NotASetting("model_path", "the model is a key from `lms ls`: put its label in [gate].models"),
    NotASetting("host", "LM Studio serves on localhost unless 'serve on local network' is on"),
    NotASetting("max_request_size", "LM Studio has no such setting"),
    NotASetting("request_timeout", "LM Studio has no such setting; lmgauge times requests"),
    NotASetting("timeout", "LM Studio has no such setting; lmgauge times requests"),
    NotASetting("enable_streaming", "streaming is asked per request (`stream: true`)"),
    NotASetting("enable_embeddings", "LM Studio always serves /v1/embeddings"),
    NotASetting(
        "model_ttl", "the idle TTL is not settable over REST; use `lms load --ttl SECONDS`"
    ),
    NotASetting(
        "jit_loading",
        "just-in-time loading is an LM Studio server option in the app (on by default), "
        "not a load setting",
    ),
    NotASetting(
        "auto_load",
        "just-in-time loading is an LM Studio server option in the app (on by default), "
        "not a load setting",
    ),
    NotASetting(
        "auto_evict",
        "auto-evict is an LM Studio server option in the app (it keeps one JIT model loaded)",
    ),
    NotASetting(
        "max_loaded_models", "LM Studio has no limit setting; with auto-evict it keeps one"
    ),
    NotASetting("gpu_memory_fraction", f"GPU offload is not settable over REST; use {GPU_FLAG}"),
    NotASetting("key_cache_quantization", f"llama.kCacheQuantizationType is {NOT_OVER_REST}"),
    NotASetting("value_cache_quantization", f"llama.vCacheQuantizationType is {NOT_OVER_REST}"),
    NotASetting("stream_buffer_size", "LM Studio has no such setting"),
    NotASetting("stream_timeout", "LM Studio has no such setting; lmgauge times requests"),
    NotASetting("keep_alive_interval", "LM Studio keeps a model until its TTL runs out"),
    NotASetting("keep_alive_enabled", "LM Studio keeps a model until its TTL runs out"),
    NotASetting(
        "model_warmup", "LM Studio has no such setting; lmgauge warms up before it measures"
    ),
    NotASetting("memory_management", "LM Studio has no such setting"),
    NotASetting(
        "model_library",
        "model names are lmgauge's catalog overrides (a TOML file), not a server setting",
    ),
    NotASetting("api_endpoints", "the endpoints are fixed by LM Studio's API"),
)

MLX = _settings(
    # mlx_lm.server flags, without their leading dashes
    Setting("model", "server", "str"),
    Setting("host", "server", "str", default="127.0.0.1"),
    Setting("port", "server", "int", minimum=1, default="8080"),
    Setting("max-tokens", "server", "int", minimum=1),
    Setting("chat-template-args", "server", "str"),
    Setting("decode-concurrency", "server", "int", minimum=1),
    Setting("prompt-concurrency", "server", "int", minimum=1),
    Setting("prompt-cache-size", "server", "int", minimum=0),
    Setting("trust-remote-code", "server", "bool"),
    # generation (mlx_lm.generate / stream_generate), applied by the in-process engine
    Setting("kv-bits", "load", "int", choices=("4", "8")),
    Setting("kv-group-size", "load", "int", minimum=1, default="64"),
    Setting("quantized-kv-start", "load", "int", minimum=0),
    Setting("max-kv-size", "load", "int", minimum=1),
    Setting("prefill-step-size", "load", "int", minimum=1, load_field="batch_tokens"),
    Setting("temp", "options", "float", minimum=0),
    Setting("top-p", "options", "float", minimum=0),
    Setting("seed", "options", "int"),
)
MLX_NOT = _not(
    NotASetting("kv_cache_compression", "MLX quantizes the KV cache with `kv-bits`"),
    NotASetting("flash_attention", "MLX has no flash-attention switch: its attention is fused"),
    NotASetting("threads", "MLX runs on the GPU (Metal); it has no thread setting"),
)

LLAMACPP = _settings(
    # llama-cpp-python Llama(...) parameters, as the embedded engine and llama-server take them
    Setting("n_ctx", "load", "int", minimum=1, load_field="context_tokens"),
    Setting("n_threads", "load", "int", minimum=1, load_field="threads"),
    Setting("n_batch", "load", "int", minimum=1, default="512", load_field="batch_tokens"),
    Setting("flash_attn", "load", "bool", load_field="flash_attention"),
    Setting("type_k", "load", "str", choices=("f16", "q8_0", "q4_0"), load_field="kv_cache_type"),
    Setting("type_v", "load", "str", choices=("f16", "q8_0", "q4_0"), load_field="kv_cache_type"),
    Setting("use_mmap", "load", "bool", load_field="use_mmap"),
    Setting("use_mlock", "load", "bool"),
    Setting("n_gpu_layers", "load", "int", minimum=-1),
    Setting("rope_freq_base", "load", "float", minimum=0),
    Setting("rope_freq_scale", "load", "float", minimum=0),
    Setting("temperature", "options", "float", minimum=0),
    Setting("top_k", "options", "int", minimum=0),
    Setting("top_p", "options", "float", minimum=0),
    Setting("seed", "options", "int"),
)
LLAMACPP_NOT = _not(
    NotASetting("threads", "llama.cpp's parameter is `n_threads`"),
    NotASetting("batch_size", "llama.cpp's parameter is `n_batch`"),
    NotASetting("context_length", "llama.cpp's parameter is `n_ctx`"),
    NotASetting("gpu_layers", "llama.cpp's parameter is `n_gpu_layers`"),
    NotASetting("mmap", "llama.cpp's parameter is `use_mmap`"),
    NotASetting("mlock", "llama.cpp's parameter is `use_mlock`"),
    NotASetting("flash_attention", "llama.cpp's parameter is `flash_attn`"),
    NotASetting("f16_kv", "llama-cpp-python replaced it with `type_k` and `type_v`"),
    NotASetting("kv_cache_compression", "the KV cache types are `type_k` and `type_v`"),
)

REGISTRIES: dict[str, tuple[dict[str, Setting], dict[str, NotASetting]]] = {
    "ollama": (OLLAMA, OLLAMA_NOT),
    "lmstudio": (LMSTUDIO, LMSTUDIO_NOT),
    "mlx": (MLX, MLX_NOT),
    "llamacpp": (LLAMACPP, LLAMACPP_NOT),
    "openai": (LLAMACPP, LLAMACPP_NOT),  # llama-server: llama.cpp's parameters
}
