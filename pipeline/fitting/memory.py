"""The memory model: the buffers llama.cpp allocates per device (weights, KV cache, output, compute).

Each rule names the llama.cpp source it mirrors (the version vendored by llama-cpp-python 0.3.36).
The compute-buffer terms were read off the graph (the largest tensors alive at each phase of a layer)
and their small constants calibrated against the buffer sizes llama.cpp reports on load; the test
matrix in tests/test_fit.py keeps them honest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pipeline.fitting.model_shape import ModelShape
from pipeline.gguf.ggml_types import block_size

F32 = 4
CTX_PAD = 256  # llama-context.cpp: cparams.n_ctx = GGML_PAD(n_ctx, 256); the SWA cache is padded the same


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
    # a quantized KV type with flash attention off never gets here (run_settings: llama.cpp refuses it)
    return Context(n_ctx, n_ubatch, parallel, kv_swa, kv_type, kv_type, flash_attn, n_stream)


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
    ffn = mask_bytes + (3 * ffn_width(shape) + 4 * shape.n_embd) * row
    if ctx.flash_attn and ctx.type_k == "f16" and shape.n_vocab * row > max(kinds) * u * 2:
        # The masks are graph inputs, allocated first at the bottom of the buffer and alive through every
        # layer. With flash attention they are small (f16), and when the logits do not fit in the hole a
        # freed mask leaves, ggml-alloc stacks the output phase (logits and final norm) on top of them.
        # (Measured with an f16 cache; with a quantized one the logits find a hole and this does not occur.)
        output = max(output, mask_bytes + (shape.n_vocab + shape.n_embd) * row)
    return max(attention, ffn, output)


def ffn_width(shape: ModelShape) -> int:
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
    GPU, then repeating layers from the last one down; token embeddings always stay on the CPU (a tied head
    puts a copy of them on the output layer's device). The KV
    cache of a layer lives with the layer (offload_kqv, the default). `--n-cpu-moe K` overrides the
    buffer type of the routed experts of layers 0..K-1 to the CPU (common/arg.cpp); the rest of those
    layers stays where -ngl put it (`--cpu-moe` is K = n_layer).
    """
    ngl = max(0, min(n_gpu_layers, shape.n_layers + 1))
    start = shape.n_layers + 1 - ngl
    experts = shape.expert_bytes or (0,) * shape.n_layers
    held = sum(experts[start : max(start, min(n_cpu_moe, shape.n_layers))])  # GPU layers' experts in RAM
    moved = sum(shape.layer_bytes[start:]) + (shape.output_bytes if ngl > 0 else 0) - held  # left the CPU
    # A tied head is a second copy of token_embd (TENSOR_DUPLICATED): the input's stays in the CPU buffer
    # (llama.cpp reports it as CPU_Mapped beside the GPU's model buffer), so the copy adds to the GPU only.
    gpu_w = moved + (shape.tied_bytes if ngl > 0 else 0)
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
    cpu = DeviceBuffers(shape.weights_bytes - moved, all_kv - gpu_kv, output, host_compute)
    return gpu, cpu
