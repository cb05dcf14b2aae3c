"""Tiny-model factory (tests, benchmarks, `make demo`): small valid GGUF models that llama.cpp loads and runs.

Weights are seeded random numbers, so generation is gibberish, but every tensor, hyperparameter and
tokenizer field is what llama.cpp's loader expects for the architecture (llama, and llama with experts as
Mixtral; gemma3 with sliding-window attention; qwen3 with q/k norms; qwen3moe, routed experts; gpt-oss,
experts with biases, attention sinks and alternating sliding windows; deepseek2, multi-head latent
attention with shared experts and a leading dense layer; glm4moe, biased attention, shared experts, a
leading dense layer and a multi-token-prediction block; mamba, a pure recurrent state-space model),
checked against src/models/<arch>.cpp of the vendored llama.cpp (the tensor tables: gguf/tiny_tensors.py).
`write_header_only_model` writes the real header of a big model and leaves the data region sparse.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from pipeline.gguf.ggml_types import block_size
from pipeline.gguf.tiny_tensors import TinySpec, tensor_shapes

_WORDS = ("the", "a", "model", "runs", "on", "small", "card", "hello", "world", "fit", "layer", "quant")


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """An SPM ('llama') vocabulary: specials, the 256 byte-fallback tokens, then plain pieces."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = [f"▁{w}" for w in _WORDS] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    index = 0
    while len(tokens) < n_vocab:
        piece = pieces[index] if index < len(pieces) else f"▁w{index}"
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        index += 1
    if len(tokens) > n_vocab:
        raise ValueError(f"n_vocab must be at least {len(tokens)} (specials + 256 byte tokens)")
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(n_vocab - 259)]
    return tokens, scores, [int(t) for t in types]


def _matrix(rng: np.random.Generator, rows: int, cols: int, dtype: str) -> np.ndarray:
    """A weight whose GGUF shape is [cols, rows] (gguf reverses numpy's shape into ggml's ne)."""
    values = rng.normal(0.0, 0.02, size=(rows, cols)).astype(np.float32)
    return values.astype(np.float16) if dtype == "f16" else values


SUPPORTED_ARCHS = ("llama", "gemma3", "qwen3", "qwen3moe", "gpt-oss", "deepseek2", "glm4moe", "mamba")
MOE_ARCHS = ("qwen3moe", "gpt-oss", "deepseek2", "glm4moe")  # architectures whose loader requires experts
# Mamba tensors llama.cpp's CPU kernels (ssm_conv, ssm_scan) read as F32 whatever the file type; A must be
# negative (it is -exp(A_log)) or the state grows without bound.
_MAMBA_F32 = (".ssm_conv1d.weight", ".ssm_a")


def _values(rng: np.random.Generator, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if len(shape) == 1:
        return np.ones(shape[0], dtype=np.float32)
    if name.endswith(".ssm_a"):
        return -np.ones(shape[::-1], dtype=np.float32)
    if len(shape) == 3 or name.endswith((".bias", "_b")):  # experts [n_expert, rows, cols]; biases stay f32
        values = rng.normal(0.0, 0.02, size=shape[::-1]).astype(np.float32)
        return values.astype(np.float16) if dtype == "f16" and len(shape) == 3 else values
    return _matrix(rng, shape[1], shape[0], "f32" if name.endswith(_MAMBA_F32) else dtype)


def write_tiny_model(path: Path, spec: TinySpec | None = None) -> Path:
    """Write the GGUF described by `spec` (llama, gemma3, qwen3 or mamba) to `path` and return the path."""
    spec = spec or TinySpec()
    if spec.arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unsupported arch {spec.arch!r} for the tiny-model factory; use one of {SUPPORTED_ARCHS}")
    if spec.arch in MOE_ARCHS and not (0 < spec.n_expert_used <= spec.n_expert):
        raise ValueError(f"{spec.arch} needs experts: 0 < n_expert_used <= n_expert")
    rng = np.random.default_rng(spec.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), spec.arch, split_max_tensors=spec.split_max_tensors)
    _write_metadata(writer, spec)
    for name, shape in tensor_shapes(spec):
        writer.add_tensor(name, _values(rng, name, shape, spec.dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(writer.format_shard_names(path)[0])  # `path` itself unless split


def _write_metadata(writer: gguf.GGUFWriter, spec: TinySpec, file_type: int | None = None) -> None:
    writer.add_name(f"tiny-{spec.arch}-{spec.n_layers}l-{spec.n_embd}d")
    writer.add_block_count(spec.n_layers + spec.n_nextn)
    if spec.n_nextn:
        writer.add_nextn_predict_layers(spec.n_nextn)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    if spec.arch == "mamba":  # as convert_hf_to_gguf writes it: no attention, no FFN
        writer.add_feed_forward_length(0)
        writer.add_head_count(0)
        writer.add_ssm_conv_kernel(spec.ssm_conv_kernel)
        writer.add_ssm_inner_size(spec.ssm_inner_size)
        writer.add_ssm_state_size(spec.ssm_state_size)
        writer.add_ssm_time_step_rank(spec.ssm_dt_rank)
        writer.add_ssm_dt_b_c_rms(False)
    elif spec.arch == "deepseek2":  # as convert_hf_to_gguf writes an MLA model: one latent "KV head"
        writer.add_feed_forward_length(spec.n_ff)
        writer.add_head_count(spec.n_head)
        writer.add_head_count_kv(1)
        writer.add_key_length(spec.kv_lora_rank + spec.qk_rope_dim)
        writer.add_value_length(spec.kv_lora_rank)
        writer.add_key_length_mla(spec.qk_nope_dim + spec.qk_rope_dim)
        writer.add_value_length_mla(spec.v_head_dim)
        writer.add_q_lora_rank(spec.q_lora_rank)
        writer.add_kv_lora_rank(spec.kv_lora_rank)
        writer.add_rope_dimension_count(spec.qk_rope_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_leading_dense_block_count(spec.n_dense_lead)
        writer.add_expert_shared_count(spec.n_expert_shared)
        writer.add_expert_weights_scale(1.0)
    else:
        writer.add_feed_forward_length(spec.n_ff)
        writer.add_head_count(spec.n_head)
        writer.add_head_count_kv(spec.n_head_kv)
        if spec.head_dim_override is not None:
            writer.add_key_length(spec.head_dim)
            writer.add_value_length(spec.head_dim)
        if spec.arch == "glm4moe":
            writer.add_leading_dense_block_count(spec.n_dense_lead)
            writer.add_expert_shared_count(spec.n_expert_shared)
        writer.add_rope_dimension_count(spec.head_dim)
        writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6 if spec.arch != "llama" else 1e-5)
    if spec.n_expert:
        writer.add_expert_count(spec.n_expert)
        writer.add_expert_used_count(spec.n_expert_used)
        if spec.arch != "llama":  # Mixtral's experts are n_ff wide; the others name the width
            writer.add_expert_feed_forward_length(spec.expert_width)
    if spec.arch in ("gemma3", "gpt-oss"):
        writer.add_sliding_window(spec.sliding_window)
        if spec.swa_pattern is not None:
            writer.add_uint32(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=spec.arch), spec.swa_pattern)
    writer.add_vocab_size(spec.n_vocab)
    if file_type is None:
        file_type = gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(file_type)

    tokens, scores, types = _vocab(spec.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)
    for key, value in spec.extra_kv.items():
        _add_extra(writer, key, value)


# Header-only presets: the file type and llama-quantize's type for most 2-D weights; the output layer takes Q6_K
# unless the preset is Q8_0 (src/llama-quant.cpp, the output-tensor rule).
_PRESETS = {
    "Q4_K_M": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


def _big_type(name: str, spec: TinySpec, preset: str) -> gguf.GGMLQuantizationType:
    """The preset's type for a 2-D weight. Q4_K_M is roughly llama.cpp's mix: Q6_K for output, and attn_v/ffn_down
    in about half the layers.

    gpt-oss is published as MXFP4 experts with everything else Q8_0 (its widths are not multiples of 256).
    """
    q4, q6, n_layers = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K, spec.n_layers
    if spec.arch == "gpt-oss":
        return gguf.GGMLQuantizationType.MXFP4 if "_exps." in name else gguf.GGMLQuantizationType.Q8_0
    if preset != "Q4_K_M":
        pure = gguf.GGMLQuantizationType[preset]
        return q6 if name == "output.weight" and pure != gguf.GGMLQuantizationType.Q8_0 else pure
    if name == "output.weight":
        return q6
    if ".attn_v." in name or ".ffn_down." in name or ".ffn_down_exps." in name:
        layer = int(name.split(".")[1])
        return q6 if layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2 else q4
    return q4


def write_header_only_model(path: Path, spec: TinySpec, preset: str = "Q4_K_M") -> Path:
    """A GGUF quantized as `preset` (Q4_K_M, Q4_0 or Q8_0; gpt-oss: MXFP4; spec.dtype "f16": F16) whose header is
    real and whose data region is a sparse hole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), spec.arch)
    f16 = spec.dtype == "f16"
    ftype = gguf.LlamaFileType.MOSTLY_MXFP4_MOE if spec.arch == "gpt-oss" else _PRESETS[preset]
    _write_metadata(writer, spec, gguf.LlamaFileType.MOSTLY_F16 if f16 else ftype)
    total = 0
    for name, shape in tensor_shapes(spec):
        f32 = len(shape) == 1 or name.endswith(_MAMBA_F32) or name.endswith(".bias")
        big = gguf.GGMLQuantizationType.F16 if f16 else _big_type(name, spec, preset)
        qtype = gguf.GGMLQuantizationType.F32 if f32 else big
        block, type_size = block_size(qtype.name)
        n_bytes = int(np.prod(shape)) // block * type_size
        numpy_shape = shape[::-1]  # gguf takes numpy order, the last axis in bytes for quantized types
        byte_shape = (*numpy_shape[:-1], numpy_shape[-1] // block * type_size)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes, raw_dtype=qtype)
        total += n_bytes + (-n_bytes % 32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with path.open("r+b") as handle:
        handle.seek(0, 2)
        header_end = handle.tell()
        handle.truncate(header_end + (-header_end % 32) + total)
    return path


def _add_extra(writer: gguf.GGUFWriter, key: str, value: object) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))  # type: ignore[call-overload]
