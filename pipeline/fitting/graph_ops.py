"""What llama.cpp's CPU backend does for one decoded token beyond its matrix work: the graph nodes it runs, and
the recurrent state a state-space layer scans.

Every computed node of the decode graph costs a dispatch whatever its size (ggml-cpu.c
ggml_graph_compute_thread: one ggml_compute_forward per node, then a ggml_barrier that all T threads wait
at), while views, reshapes and permutes cost nothing (ggml_op_is_empty). A small model runs hundreds of such
nodes per token, most of them norms, ropes, adds and the softmax on vectors of n_embd floats, so their number
rather than their size is what a token pays beyond its matrix work. The counts are those of the graphs
src/models/<arch>.cpp builds for one token (n_tokens = 1), as llama.cpp's scheduler lists them with
GGML_SCHED_DEBUG=2 (ggml-backend.cpp ggml_backend_sched_print_assignments, which skips the view ops); the
tests hold this table to that list.

A recurrent layer also updates its whole SSM state every token: ggml-cpu ops.cpp ggml_compute_forward_ssm_scan_f32
(the Mamba-1 path) runs a scalar loop with one expf per state element ("can't really use GGML_SIMD here because
d_state is usually 16"), d_inner x d_state of them per layer, and the state is copied in and out of the cache
around it. At Mamba-130M's shape that is 24 x 24,576 elements a token: milliseconds, more than its graph nodes.
"""

from __future__ import annotations

from pipeline.fitting.model_shape import ModelShape

# Computed nodes outside the layers: the embedding lookup (get_rows), the output norm (rms_norm, mul), the
# output head (mul_mat) and the last layer's selection of the output row (two get_rows, inp_out_ids);
# gemma3 also scales the embeddings, gpt-oss selects its output row once.
FIXED_OPS = {"gemma3": 7, "gpt-oss": 5}
DEFAULT_FIXED_OPS = 6
# Computed nodes per repeating layer. Dense llama: rms_norm and mul before attention and FFN (4), q/k/v and
# output matrices (4), rope on q and k (2), two set_rows into the cache, kq and kqv mul_mats (2), softmax,
# cont, two residual adds, gate/up/down mul_mats (3) and swiglu. qwen3 adds q/k norms (4), gemma3 those and
# post-attention/FFN norms and an attention scale (9). Mamba: models/graph-context-mamba.cpp build_mamba_layer,
# its ssm_conv and ssm_scan each one node among the copies of the recurrent state.
LAYER_OPS = {"llama": 22, "qwen3": 26, "gemma3": 31, "mamba": 27}
# A layer with routed experts, at n_expert_used = 2 (llama-graph.cpp build_moe_ffn): the router's mul_mat,
# softmax, argsort (top-k), get_rows of the weights, their normalisation (sum_rows, clamp, div), the weights'
# mul, three mul_mat_id (gate, up, down of the selected experts) and swiglu replace the dense FFN's four.
MOE_LAYER_OPS = {"llama": 31, "qwen3moe": 35, "gpt-oss": 33, "deepseek2": 41, "glm4moe": 37}
DEFAULT_LAYER_OPS = LAYER_OPS["llama"]
DEFAULT_MOE_LAYER_OPS = MOE_LAYER_OPS["llama"]
RECURRENT_DEFAULT = "mamba"


def moe_sum_ops(n_expert_used: int) -> int:
    """Nodes that sum the selected experts' outputs: one add per expert after the first, or one cont when a
    single expert is used (llama-graph.cpp build_moe_ffn, "aggregate experts")."""
    return max(1, n_expert_used - 1)


def layer_ops(shape: ModelShape, layer: int) -> int:
    """Computed nodes of one repeating layer for one token."""
    experts = shape.expert_bytes[layer] if layer < len(shape.expert_bytes) else 0
    if experts and shape.n_expert_used:
        base = MOE_LAYER_OPS.get(shape.arch, DEFAULT_MOE_LAYER_OPS) - moe_sum_ops(2)
        return base + moe_sum_ops(shape.n_expert_used)
    if shape.arch not in LAYER_OPS and shape.is_recurrent[layer : layer + 1] == (True,):
        return LAYER_OPS[RECURRENT_DEFAULT]
    return LAYER_OPS.get(shape.arch, DEFAULT_LAYER_OPS)


def decode_ops(shape: ModelShape, layers: int | None = None) -> int:
    """Computed nodes of llama.cpp's graph for one decoded token: the fixed ones and those of the first
    `layers` layers (default all: the CPU side of a partial offload runs the first ones)."""
    fixed = FIXED_OPS.get(shape.arch, DEFAULT_FIXED_OPS)
    count = shape.n_layers if layers is None else max(0, min(layers, shape.n_layers))
    return fixed + sum(layer_ops(shape, layer) for layer in range(count))


def state_elements(shape: ModelShape, layers: int | None = None) -> int:
    """Recurrent state elements (n_embd_s: d_inner x d_state for Mamba) the first `layers` layers scan per token."""
    count = shape.n_layers if layers is None else max(0, min(layers, shape.n_layers))
    return shape.n_embd_s * sum(shape.is_recurrent[:count])
