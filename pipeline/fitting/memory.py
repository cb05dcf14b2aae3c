"""The memory model: the buffers llama.cpp allocates per device (weights, KV cache, output, compute).

Each rule names the llama.cpp source it mirrors (the version vendored by llama-cpp-python 0.3.36).
The compute-buffer terms were read off the graph (the largest tensors alive at each phase of a layer)
and their small constants calibrated against the buffer sizes llama.cpp reports on load; the test
matrix in tests/test_fit.py keeps them honest.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.base.errors import FitError
from pipeline.gguf.ggml_types import block_size
from pipeline.gguf.header import GGUFHeader, layer_of

F32 = 4
CTX_PAD = 256  # llama-context.cpp: cparams.n_ctx = GGML_PAD(n_ctx, 256); the SWA cache is padded the same
# llama.cpp's default SWA period per architecture (load_swa_pattern(ml, N) in src/models/<arch>.cpp),
# used when the GGUF has no {arch}.attention.sliding_window_pattern.
SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gemma3n": 5, "gpt-oss": 2}
# llama-arch.cpp llm_arch_is_recurrent: one recurrent state per sequence instead of a KV cache.
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# common/common.h LLM_FFN_EXPS_REGEX: the routed-expert tensors (and their biases) that --cpu-moe and
# --n-cpu-moe keep on the CPU (std::regex_search, so a suffix such as .weight or .bias still matches).
EXPERTS_RE = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs from a GGUF header: hyperparameters and where each tensor's bytes go."""

    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_swa: int
    is_swa: tuple[bool, ...]  # per layer
    n_ctx_train: int
    is_recurrent: tuple[bool, ...]  # per layer: a recurrent state (Mamba/RWKV) instead of a KV cache
    n_embd_r: int  # floats per sequence in a recurrent layer's r state (the convolution / token-shift rows)
    n_embd_s: int  # floats per sequence in its s state (the SSM / WKV state)
    ssm_d_inner: int
    layer_bytes: tuple[int, ...]  # weights per repeating layer
    input_bytes: int  # token embeddings and other non-layer tensors that stay with the input (CPU)
    output_bytes: int  # output norm + output head (offloaded first: it is llama.cpp's layer n_layer)
    tied_bytes: int  # no output.weight: the GPU gets a copy of token_embd as the head (TENSOR_DUPLICATED)
    n_params: int
    # Mixture of experts (all zero for a dense model). expert_bytes is the part of layer_bytes that the
    # routed experts take (EXPERTS_RE); a layer without them (a leading dense layer) has 0.
    expert_bytes: tuple[int, ...] = ()
    expert_params: int = 0  # elements of the routed-expert tensors
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0  # one routed expert's FFN width
    n_ff_shexp: int = 0  # the shared experts' FFN width, all together
    max_expert_tensor_bytes: int = 0
    # Multi-head latent attention (deepseek2 with {arch}.attention.key_length_mla): the cache holds one
    # compressed latent per token as K (kv_lora_rank + n_rot wide, the header's key_length) and no V.
    is_mla: bool = False
    skipped_params: int = 0  # multi-token-prediction layers llama.cpp does not load (counted in n_params)
    # Matrix work per token for the speed model (pipeline/fitting/speed.py): ggml type -> weight elements of the
    # 2-D tensors each repeating layer multiplies (its routed experts apart, in expert_elements: a token
    # multiplies n_expert_used/n_expert of them), and the output head's (token_embd when tied).
    # (Compared but not hashed: dicts cannot be; equal shapes still hash equal.)
    layer_elements: tuple[Mapping[str, int], ...] = field(default=(), hash=False)
    output_elements: Mapping[str, int] = field(default_factory=dict, hash=False)
    expert_elements: tuple[Mapping[str, int], ...] = field(default=(), hash=False)

    @property
    def weights_bytes(self) -> int:
        return self.input_bytes + self.output_bytes + sum(self.layer_bytes)

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0 and any(self.expert_bytes)

    @property
    def active_fraction(self) -> float:
        """The share of each routed-expert tensor a token reads: n_expert_used of n_expert experts."""
        return self.n_expert_used / self.n_expert if self.is_moe else 1.0

    @property
    def active_params(self) -> int:
        """Parameters read per token: everything but the routed experts not chosen (one embedding row aside)."""
        return self.n_params - self.skipped_params - round(self.expert_params * (1 - self.active_fraction))

    @property
    def n_dense_layers(self) -> int:
        """Layers with a dense FFN instead of experts (glm4moe's and deepseek2's leading dense layers)."""
        return sum(1 for b in self.expert_bytes if b == 0) if self.is_moe else self.n_layers


def _int(header: GGUFHeader, key: str, default: int | None = None) -> int:
    value = header.get(key, default)
    if isinstance(value, list):  # per-layer arrays (e.g. head_count_kv in some models): take the widest
        value = max(value) if value else default
    if not isinstance(value, int):
        raise FitError(f"{header.path}: missing or invalid {header.architecture}.{key} (needed to size the model)")
    return value


def _per_layer(header: GGUFHeader, key: str, n_layers: int, default: int) -> tuple[int, ...]:
    value = header.get(key, default)
    if isinstance(value, list) and len(value) == n_layers:
        return tuple(int(v) for v in value)
    return (int(value) if isinstance(value, int) else default,) * n_layers


def _swa_layers(header: GGUFHeader, n_layers: int, n_swa: int) -> tuple[bool, ...]:
    """llama-hparams.cpp set_swa_pattern: layer il is SWA unless il % period == period - 1."""
    if n_swa <= 0:
        return (False,) * n_layers
    pattern = header.get("attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == n_layers:
        return tuple(bool(p) for p in pattern)
    period = pattern if isinstance(pattern, int) else SWA_PERIOD.get(header.architecture, 1)
    if period == 1 and header.architecture not in SWA_PERIOD:
        return (False,) * n_layers  # unknown architecture: size every layer as full attention (the larger)
    return tuple(period == 0 or il % period < period - 1 for il in range(n_layers))


def _recurrent_widths(header: GGUFHeader, n_embd: int) -> tuple[int, int, int]:
    """(n_embd_r, n_embd_s, d_inner) as llama-hparams.cpp n_embd_r()/n_embd_s() compute them."""
    wkv_head_size = int(header.get("wkv.head_size", 0) or 0)
    if wkv_head_size:  # RWKV: token-shift rows and the WKV state
        return int(header.get("token_shift_count", 2) or 2) * n_embd, n_embd * wkv_head_size, 0
    d_conv = int(header.get("ssm.conv_kernel", 0) or 0)
    d_inner = int(header.get("ssm.inner_size", 0) or 0)
    d_state = int(header.get("ssm.state_size", 0) or 0)
    n_group = int(header.get("ssm.group_count", 0) or 0)
    # Mamba: the last d_conv - 1 convolution columns of x (and of B, C in Mamba-2), and the SSM state
    return max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state), d_state * d_inner, d_inner


def model_shape(
    headers: Sequence[GGUFHeader], tensor_bytes: Mapping[str, int] | None = None,
    tensor_types: Mapping[str, str] | None = None,
) -> ModelShape:  # fmt: skip
    """Hyperparameters from the first shard, tensor sizes from all; `tensor_bytes` (and `tensor_types`)
    override sizes (and ggml types) by name: a quantize plan's, to fit a quant before it exists."""
    head = headers[0]
    n_layers = head.n_layers
    if n_layers <= 0:
        raise FitError(f"{head.path}: no {head.architecture}.block_count: not a model mm can fit")
    # llama-model.cpp: the last {arch}.nextn_predict_layers blocks are multi-token-prediction layers (GLM-4.5,
    # DeepSeek-V3 style); n_layer() leaves them out, and without an MTP context (load_mtp, off by default)
    # their tensors are TENSOR_SKIP: never allocated, no KV cache, not counted by -ngl.
    n_nextn = int(head.get("nextn_predict_layers", 0) or 0)
    n_layers -= n_nextn if 0 < n_nextn < n_layers else 0
    n_embd = _int(head, "embedding_length")
    recurrent = head.architecture in RECURRENT_ARCHS
    n_head = _int(head, "attention.head_count", 0 if recurrent else None)
    head_dim_k = _int(head, "attention.key_length", n_embd // max(n_head, 1))
    layer_bytes = [0] * n_layers
    expert_bytes = [0] * n_layers
    input_bytes = output_bytes = n_params = expert_params = n_ff_exp = n_ff_shexp = max_expert = skipped_params = 0
    n_vocab = embd_bytes = 0
    has_output = False
    layer_elements: list[dict[str, int]] = [{} for _ in range(n_layers)]
    expert_elements: list[dict[str, int]] = [{} for _ in range(n_layers)]
    output_elements: dict[str, int] = {}
    embd_elements: dict[str, int] = {}
    for header in headers:
        for tensor in header.tensors:
            size = tensor_bytes.get(tensor.name, tensor.n_bytes) if tensor_bytes else tensor.n_bytes
            kind = (tensor_types or {}).get(tensor.name, tensor.type_name).upper()
            matrix = tensor.n_elements if len(tensor.shape) >= 2 else 0
            n_params += tensor.n_elements
            layer = layer_of(tensor.name)
            if layer is not None and layer >= n_layers:  # an MTP layer llama.cpp skips
                skipped_params += tensor.n_elements
            elif layer is not None:
                layer_bytes[layer] += size
                if EXPERTS_RE.search(tensor.name):
                    _add(expert_elements[layer], kind, matrix)
                    expert_bytes[layer] += size
                    expert_params += tensor.n_elements
                    max_expert = max(max_expert, size)
                    if ".ffn_up_exps." in tensor.name and len(tensor.shape) == 3:  # {n_embd, n_ff_exp, n_expert}
                        n_ff_exp = tensor.shape[1]
                else:
                    _add(layer_elements[layer], kind, matrix)
                if ".ffn_up_shexp." in tensor.name and len(tensor.shape) >= 2:  # {n_embd, n_ff_shexp}
                    n_ff_shexp = tensor.shape[1]
            elif tensor.name.startswith(("output", "cls")):
                output_bytes += size
                _add(output_elements, kind, matrix)
            else:
                input_bytes += size
                if tensor.name == "token_embd.weight":
                    _add(embd_elements, kind, matrix)
            has_output = has_output or tensor.name == "output.weight"
            if tensor.name == "token_embd.weight" and len(tensor.shape) > 1:
                n_vocab, embd_bytes = tensor.shape[1], size
    tokens = head.metadata.get("tokenizer.ggml.tokens")
    n_vocab = n_vocab or (len(tokens) if tokens is not None else _int(head, "vocab_size"))
    n_swa = int(head.get("attention.sliding_window", 0) or 0)
    n_embd_r, n_embd_s, d_inner = _recurrent_widths(head, n_embd) if recurrent else (0, 0, 0)
    shape = ModelShape(
        arch=head.architecture,
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=_per_layer(head, "attention.head_count_kv", n_layers, 0 if recurrent else n_head),
        head_dim_k=head_dim_k,
        head_dim_v=_int(head, "attention.value_length", head_dim_k),
        n_ff=_int(head, "feed_forward_length", 0 if recurrent else 4 * n_embd),
        n_vocab=n_vocab,
        n_swa=n_swa,
        is_swa=_swa_layers(head, n_layers, n_swa),
        n_ctx_train=_int(head, "context_length", 4096),
        is_recurrent=(recurrent,) * n_layers,
        n_embd_r=n_embd_r,
        n_embd_s=n_embd_s,
        ssm_d_inner=d_inner,
        layer_bytes=tuple(layer_bytes),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        tied_bytes=0 if has_output else embd_bytes,
        n_params=n_params,
        expert_bytes=tuple(expert_bytes),
        expert_params=expert_params,
        n_expert=int(head.get("expert_count", 0) or 0),
        n_expert_used=int(head.get("expert_used_count", 0) or 0),
        n_expert_shared=int(head.get("expert_shared_count", 0) or 0),
        n_ff_exp=n_ff_exp,
        n_ff_shexp=n_ff_shexp,
        max_expert_tensor_bytes=max_expert,
        is_mla=bool(head.get("attention.key_length_mla")) and bool(head.get("attention.value_length_mla")),
        skipped_params=skipped_params,
        layer_elements=tuple(layer_elements),
        output_elements={**output_elements, **({} if has_output else embd_elements)},
        expert_elements=tuple(expert_elements),
    )
    check_shape(head, shape)
    return shape


def check_shape(head: GGUFHeader, shape: ModelShape) -> None:
    """Refuse shapes no model has (a damaged or hostile header), rather than fit them to nonsense numbers."""
    problems = []
    if shape.n_params == 0:
        problems.append("it has no tensors")
    if shape.n_embd <= 0:
        problems.append(f"embedding_length is {shape.n_embd}")
    if not all(shape.is_recurrent) and (shape.n_head <= 0 or max(shape.n_head_kv) <= 0):
        problems.append(f"{shape.n_head} attention heads and {max(shape.n_head_kv)} KV heads")
    empty = [i for i, size in enumerate(shape.layer_bytes) if size == 0]
    if empty and shape.n_params:
        problems.append(
            f"{len(empty)} of its {shape.n_layers} layers have no tensors (block_count says {shape.n_layers}; "
            f"first empty: blk.{empty[0]})"
        )
    if problems:
        raise FitError(
            f"{head.path}: not a model that can run: {'; '.join(problems)}",
            hint="the file is damaged or its header was written wrongly; `mm inspect` shows what it declares",
        )


def _add(counts: dict[str, int], kind: str, elements: int) -> None:
    if elements:
        counts[kind] = counts.get(kind, 0) + elements


@dataclass(frozen=True)
class Context:
    """The context parameters after llama.cpp's own adjustments (llama-context.cpp constructor)."""

    n_ctx: int  # padded to 256 (per stream, times the streams)
    n_ubatch: int  # min(n_batch, n_ubatch), n_batch = min(n_ctx, n_batch)
    n_seq: int
    kv_swa: int  # cells in the SWA cache, all streams together
    type_k: str
    type_v: str
    flash_attn: bool
    n_stream: int = 1  # KV streams: one per sequence, or one shared by all with a unified cache

    @property
    def stream_cells(self) -> tuple[int, int]:
        """(full, SWA) cells one stream holds: what one sequence's attention spans."""
        return self.n_ctx // self.n_stream, self.kv_swa // self.n_stream


def _pad(n: int) -> int:
    return -(-n // CTX_PAD) * CTX_PAD


def context(
    ctx: int, batch: int, ubatch: int, parallel: int, kv_type: str, flash_attn: bool, swa_full: bool, shape: ModelShape,
    kv_unified: bool = False,
) -> Context:  # fmt: skip
    """llama-context.cpp's constructor and llama-kv-cache-iswa.cpp's cache sizes.

    Without a unified cache (the default) each sequence has its own stream of n_ctx_seq = pad(n_ctx /
    n_seq, 256) cells, and its own SWA stream of pad(min(n_ctx_seq, n_swa + n_ubatch), 256); a unified cache
    is one stream of n_ctx cells whose SWA part must hold every sequence's window: n_swa * n_seq + n_ubatch.
    swa_full makes the SWA cache as large as the full one.
    """
    n_ctx = _pad(ctx)
    n_stream = 1 if kv_unified else parallel
    n_ctx_seq = n_ctx if kv_unified else _pad(n_ctx // parallel)
    n_ctx = n_ctx_seq * n_stream
    n_batch = min(n_ctx, batch)
    n_ubatch = min(n_batch, ubatch)
    window = shape.n_swa * (parallel if kv_unified else 1) + n_ubatch
    kv_swa = n_ctx if swa_full else _pad(min(n_ctx_seq, window)) * n_stream
    # llama-context.cpp refuses a quantized V cache without flash attention and its default (auto) mode
    # turns flash attention on for it; mm mirrors auto: a quantized KV type implies flash attention.
    flash = flash_attn or kv_type != "f16"
    return Context(n_ctx, n_ubatch, parallel, kv_swa, kv_type, kv_type, flash, n_stream)


def _row_bytes(type_name: str, n: int) -> int:
    block, size = block_size(type_name)
    return -(-n // block) * size


def kv_layer_bytes(shape: ModelShape, ctx: Context, il: int) -> int:
    """llama-kv-cache.cpp: per layer a K tensor [n_embd_k_gqa, kv_size] and a V tensor [n_embd_v_gqa, kv_size]
    (none with MLA).

    A recurrent layer instead holds llama-memory-recurrent.cpp's r and s states (F32), one row each per
    sequence (mem_size = max(1, n_seq_max); no rollback snapshots, n_rs_seq = 0 by default): its size does
    not depend on the context at all.
    """
    if shape.is_recurrent[il]:
        return (shape.n_embd_r + shape.n_embd_s) * F32 * max(1, ctx.n_seq)
    cells = ctx.kv_swa if shape.is_swa[il] else ctx.n_ctx
    k = _row_bytes(ctx.type_k, shape.n_head_kv[il] * shape.head_dim_k)
    # llama-kv-cache.cpp: has_v = !is_mla (the MLA value is read back out of the latent K)
    v = 0 if shape.is_mla else _row_bytes(ctx.type_v, shape.n_head_kv[il] * shape.head_dim_v)
    return (k + v) * cells


@functools.lru_cache(maxsize=32)
def kv_per_layer(shape: ModelShape, ctx: Context) -> tuple[int, ...]:
    """kv_layer_bytes of every layer (cached: the placement search sums it for many splits)."""
    return tuple(kv_layer_bytes(shape, ctx, il) for il in range(shape.n_layers))


def output_buffer_bytes(shape: ModelShape, ctx: Context) -> int:
    """llama-context.cpp output_reserve(n_seq_max) at init: n_vocab logits per sequence (float32)."""
    return shape.n_vocab * ctx.n_seq * F32


@functools.lru_cache(maxsize=32)
def compute_buffer_bytes(shape: ModelShape, ctx: Context) -> int:
    """The graph allocator's peak for a worst-case ubatch: the largest live set across a layer's phases.

    Phases (tensors of n_ubatch rows; widths in floats): attention without flash attention holds the
    scores KQ [n_kv, n_ubatch, n_head] (softmax runs in place) plus the mask; flash attention holds only
    an f16 mask and its output; the FFN holds gate/up/act [n_ff]; the output holds the logits [n_vocab].
    Masks (one per cache: full and SWA) live until the last layer.
    """
    u = ctx.n_ubatch
    row = u * F32
    output = shape.n_vocab * row + 3 * shape.n_embd * row  # the masks are dead after the last layer
    if all(shape.is_recurrent):
        return max(output, _recurrent_compute_bytes(shape, ctx))
    q_width = shape.n_head * shape.head_dim_k
    kv_width = max(shape.n_head_kv) * shape.head_dim_k
    # Each sequence has its own KV stream (llama.cpp's default, kv_unified off): the worst-case ubatch is
    # spread over the streams, so scores and masks span one stream's cells each (llama-kv-cache.cpp); a
    # unified cache is a single stream that every token attends over.
    kinds = [ctx.stream_cells[1] if swa else ctx.stream_cells[0] for swa in sorted(set(shape.is_swa))]
    mask_bytes = sum(n_kv * u * (2 if ctx.flash_attn else F32) for n_kv in kinds)
    if ctx.flash_attn:
        attention = mask_bytes + (6 * shape.n_embd + 2 * q_width) * row
    else:
        scores = max(kinds) * u * shape.n_head * F32
        attention = scores + mask_bytes + (3 * shape.n_embd + 2 * q_width + 2 * kv_width) * row
        if shape.is_mla:  # llama-graph.cpp build_attn_mha: no V cache, so V = cont(transpose(latent)), f16
            attention += max(kinds) * ctx.n_stream * shape.head_dim_v * 2
    ffn = mask_bytes + (3 * _ffn_width(shape) + 4 * shape.n_embd) * row
    if ctx.flash_attn and ctx.type_k == "f16" and shape.n_vocab * row > max(kinds) * u * 2:
        # The masks are graph inputs, allocated first at the bottom of the buffer and alive through every
        # layer. With flash attention they are small (f16), and when the logits do not fit in the hole a
        # freed mask leaves, ggml-alloc stacks the output phase (logits and final norm) on top of them.
        # (Measured with an f16 cache; with a quantized one the logits find a hole and this does not occur.)
        output = max(output, mask_bytes + (shape.n_vocab + shape.n_embd) * row)
    return max(attention, ffn, output)


def _ffn_width(shape: ModelShape) -> int:
    """The widest FFN activation per token: a dense layer's n_ff, or a MoE layer's experts side by side
    (llama-graph.cpp build_moe_ffn: up, gate and their product are [n_ff_exp, n_expert_used, n_tokens])."""
    dense = shape.n_ff if shape.n_dense_layers else 0
    return max(dense, shape.n_ff_exp * shape.n_expert_used) if shape.is_moe else shape.n_ff


def _recurrent_compute_bytes(shape: ModelShape, ctx: Context) -> int:
    """A Mamba layer's peak (models/mamba-base.cpp build_mamba_layer): per token xz [2 d_inner], the conv
    input and output, dt and the scan's y [d_inner each] beside the residual; per sequence the r and s
    states gathered from the cache, with the scan writing the new s and the conv its last columns.
    Independent of n_ctx. Calibrated on mamba; RWKV and Mamba-2 graphs differ and are not checked."""
    per_token = 5 * max(shape.ssm_d_inner, 2 * shape.n_embd) + 3 * shape.n_embd
    per_seq = shape.n_embd_s + 2 * shape.n_embd_r
    return (per_token * ctx.n_ubatch + per_seq * ctx.n_seq) * F32


@dataclass(frozen=True)
class DeviceBuffers:
    """The buffers llama.cpp allocates on one device, in bytes per component (not a split GGUF's shards)."""

    weights: int = 0
    kv: int = 0
    output: int = 0
    compute: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.output + self.compute


def split_layers(
    shape: ModelShape, ctx: Context, n_gpu_layers: int, n_cpu_moe: int = 0
) -> tuple[DeviceBuffers, DeviceBuffers]:
    """(gpu, cpu) buffers for `n_gpu_layers` (and `n_cpu_moe`), as llama-model.cpp load_tensors assigns them.

    i_gpu_start = n_layer + 1 - n_gpu_layers: the output layer (index n_layer) is the first to go to the
    GPU, then repeating layers from the last one down; token embeddings always stay on the CPU. The KV
    cache of a layer lives with the layer (offload_kqv, the default). `--n-cpu-moe K` overrides the
    buffer type of the routed experts of layers 0..K-1 to the CPU (common/arg.cpp); the rest of those
    layers stays where -ngl put it (`--cpu-moe` is K = n_layer).
    """
    ngl = max(0, min(n_gpu_layers, shape.n_layers + 1))
    start = shape.n_layers + 1 - ngl
    experts = shape.expert_bytes or (0,) * shape.n_layers
    held = sum(experts[start : max(start, min(n_cpu_moe, shape.n_layers))])  # GPU layers' experts in RAM
    gpu_w = sum(shape.layer_bytes[start:]) + (shape.output_bytes + shape.tied_bytes if ngl > 0 else 0)
    gpu_w -= held
    kv = kv_per_layer(shape, ctx)
    gpu_kv, all_kv = sum(kv[start:]), sum(kv)
    compute = compute_buffer_bytes(shape, ctx)
    output = output_buffer_bytes(shape, ctx)
    if ngl == 0:
        return DeviceBuffers(), DeviceBuffers(shape.weights_bytes, all_kv, output, compute)
    # With any layer offloaded, the scheduler runs the big matmuls on the GPU (op_offload) and keeps a
    # small host buffer for the inputs: the embeddings of the ubatch and the logits copied back.
    host_compute = (2 * shape.n_embd + shape.n_vocab) * ctx.n_ubatch * F32
    if held:
        # op_offload also runs a prompt batch's expert matmuls on the GPU, copying the CPU-resident expert
        # weights in (ggml-backend.cpp split inputs; ggml-cuda offload_op takes MUL_MAT_ID at >= 32 tokens):
        # the GPU's compute buffer holds the largest such tensor. An estimate: not checked against a GPU.
        compute += shape.max_expert_tensor_bytes
    gpu = DeviceBuffers(gpu_w, gpu_kv, 0, compute)
    cpu = DeviceBuffers(shape.weights_bytes - gpu_w, all_kv - gpu_kv, output, host_compute)
    return gpu, cpu
