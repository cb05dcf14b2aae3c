"""The tensors a tiny model of each architecture has (name and ggml shape), as src/models/<arch>.cpp of the
vendored llama.cpp loads them: attention and FFN per layer, experts, latent attention, state-space layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the spec is the factory's (tiny_model imports these tables to write them)
    from pipeline.gguf.tiny_model import TinySpec

Shapes = list[tuple[str, tuple[int, ...]]]


def tensor_shapes(spec: TinySpec) -> Shapes:
    """Every tensor the architecture's loader requires, in ggml order (ne0 = input width first)."""
    d, q, kv, ff = spec.n_embd, spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim, spec.n_ff
    shapes: Shapes = [("token_embd.weight", (d, spec.n_vocab))]
    if spec.arch == "mamba":
        return shapes + _mamba_layers(spec) + _output(spec)
    if spec.arch == "deepseek2":
        return shapes + _deepseek2_layers(spec) + _output(spec)
    if spec.arch == "glm4moe":
        return shapes + _glm4moe_layers(spec) + _output(spec)
    for i in range(spec.n_layers):
        b = f"blk.{i}"
        shapes += [(f"{b}.attn_norm.weight", (d,)), (f"{b}.attn_q.weight", (d, q))]
        shapes += [(f"{b}.attn_k.weight", (d, kv)), (f"{b}.attn_v.weight", (d, kv))]
        shapes += [(f"{b}.attn_output.weight", (q, d))]
        if spec.arch in ("gemma3", "qwen3", "qwen3moe"):
            shapes += [(f"{b}.attn_q_norm.weight", (spec.head_dim,)), (f"{b}.attn_k_norm.weight", (spec.head_dim,))]
        if spec.arch == "gemma3":
            shapes += [(f"{b}.post_attention_norm.weight", (d,))]
        if spec.arch == "gpt-oss":  # models/openai-moe.cpp: post-attention norm, sinks, biases
            shapes += [(f"{b}.post_attention_norm.weight", (d,)), (f"{b}.attn_sinks.weight", (spec.n_head,))]
            shapes += [(f"{b}.attn_output.bias", (d,))]
        else:
            shapes += [(f"{b}.ffn_norm.weight", (d,))]
        shapes += _experts(spec, b) if spec.n_expert else _dense_ffn(b, d, ff)
        if spec.arch == "gemma3":
            shapes += [(f"{b}.post_ffw_norm.weight", (d,))]
    return shapes + _output(spec)


def _dense_ffn(b: str, d: int, ff: int) -> Shapes:
    return [(f"{b}.ffn_gate.weight", (d, ff)), (f"{b}.ffn_up.weight", (d, ff)), (f"{b}.ffn_down.weight", (ff, d))]


def _nextn(spec: TinySpec, b: str) -> Shapes:
    """An MTP block's own tensors beside a full layer: the projection of [embedding, hidden state], two norms."""
    d = spec.n_embd
    return [
        (f"{b}.nextn.eh_proj.weight", (2 * d, d)),
        (f"{b}.nextn.enorm.weight", (d,)),
        (f"{b}.nextn.hnorm.weight", (d,)),
    ]


def _shared_experts(spec: TinySpec, b: str) -> Shapes:
    d, shared = spec.n_embd, spec.expert_width * spec.n_expert_shared
    return [(f"{b}.ffn_gate_shexp.weight", (d, shared)), (f"{b}.ffn_down_shexp.weight", (shared, d)),
            (f"{b}.ffn_up_shexp.weight", (d, shared))]  # fmt: skip


def _glm4moe_layers(spec: TinySpec) -> Shapes:
    """models/glm4-moe.cpp load_arch_tensors: biased q/k/v, a post-attention norm, the router's selection
    bias, shared experts; dense FFNs in the leading layers."""
    d, q, kv = spec.n_embd, spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    shapes: Shapes = []
    for i in range(spec.n_layers + spec.n_nextn):
        b = f"blk.{i}"
        shapes += _nextn(spec, b) if i >= spec.n_layers else []
        shapes += [(f"{b}.attn_norm.weight", (d,)), (f"{b}.attn_q.weight", (d, q)), (f"{b}.attn_k.weight", (d, kv))]
        shapes += [(f"{b}.attn_v.weight", (d, kv)), (f"{b}.attn_q.bias", (q,)), (f"{b}.attn_k.bias", (kv,))]
        shapes += [(f"{b}.attn_v.bias", (kv,)), (f"{b}.attn_output.weight", (q, d))]
        shapes += [(f"{b}.post_attention_norm.weight", (d,))]
        if i < spec.n_dense_lead:
            shapes += _dense_ffn(b, d, spec.n_ff)
            continue
        shapes += [*_experts(spec, b), (f"{b}.exp_probs_b.bias", (spec.n_expert,)), *_shared_experts(spec, b)]
    return shapes


def _deepseek2_layers(spec: TinySpec) -> Shapes:
    """models/deepseek2.cpp load_arch_tensors (MLA with split k_b/v_b, q through a low-rank projection)."""
    d, q, kv, rope, h = spec.n_embd, spec.q_lora_rank, spec.kv_lora_rank, spec.qk_rope_dim, spec.n_head
    k_mla, v_mla = spec.qk_nope_dim + rope, spec.v_head_dim
    shapes: Shapes = []
    for i in range(spec.n_layers + spec.n_nextn):
        b = f"blk.{i}"
        shapes += _nextn(spec, b) if i >= spec.n_layers else []  # an MTP block: a full layer and its own
        shapes += [(f"{b}.attn_norm.weight", (d,)), (f"{b}.attn_q_a_norm.weight", (q,))]
        shapes += [(f"{b}.attn_kv_a_norm.weight", (kv,)), (f"{b}.attn_q_a.weight", (d, q))]
        shapes += [(f"{b}.attn_q_b.weight", (q, h * k_mla)), (f"{b}.attn_kv_a_mqa.weight", (d, kv + rope))]
        shapes += [(f"{b}.attn_k_b.weight", (spec.qk_nope_dim, kv, h)), (f"{b}.attn_v_b.weight", (kv, v_mla, h))]
        shapes += [(f"{b}.attn_output.weight", (h * v_mla, d)), (f"{b}.ffn_norm.weight", (d,))]
        if i < spec.n_dense_lead:
            shapes += _dense_ffn(b, d, spec.n_ff)
            continue
        shapes += [*_experts(spec, b), *_shared_experts(spec, b)]
    return shapes


def _experts(spec: TinySpec, b: str) -> Shapes:
    """The router and the routed experts, 3-D [n_embd, n_ff_exp, n_expert] (models/qwen3moe.cpp, llama.cpp)."""
    d, ff, n = spec.n_embd, spec.expert_width, spec.n_expert
    shapes: Shapes = [(f"{b}.ffn_gate_inp.weight", (d, n))]
    shapes += [(f"{b}.ffn_gate_exps.weight", (d, ff, n)), (f"{b}.ffn_down_exps.weight", (ff, d, n))]
    shapes += [(f"{b}.ffn_up_exps.weight", (d, ff, n))]
    if spec.arch == "gpt-oss":
        shapes += [(f"{b}.ffn_gate_inp.bias", (n,)), (f"{b}.ffn_gate_exps.bias", (ff, n))]
        shapes += [(f"{b}.ffn_down_exps.bias", (d, n)), (f"{b}.ffn_up_exps.bias", (ff, n))]
    return shapes


def _output(spec: TinySpec) -> Shapes:
    shapes: Shapes = [("output_norm.weight", (spec.n_embd,))]
    if (not spec.tie_embeddings and spec.arch != "gemma3") or spec.arch == "gpt-oss":  # gemma3 always ties
        shapes.append(("output.weight", (spec.n_embd, spec.n_vocab)))
    return shapes


def _mamba_layers(spec: TinySpec) -> Shapes:
    """src/models/mamba.cpp load_arch_tensors: a norm and the selective-scan block per layer."""
    d, inner, state, rank = spec.n_embd, spec.ssm_inner_size, spec.ssm_state_size, spec.ssm_dt_rank
    shapes: Shapes = []
    for i in range(spec.n_layers):
        b = f"blk.{i}"
        shapes += [(f"{b}.attn_norm.weight", (d,)), (f"{b}.ssm_in.weight", (d, 2 * inner))]
        shapes += [(f"{b}.ssm_conv1d.weight", (spec.ssm_conv_kernel, inner)), (f"{b}.ssm_conv1d.bias", (inner,))]
        shapes += [(f"{b}.ssm_x.weight", (inner, rank + 2 * state))]
        shapes += [(f"{b}.ssm_dt.weight", (rank, inner)), (f"{b}.ssm_dt.bias", (inner,))]
        shapes += [(f"{b}.ssm_a", (state, inner)), (f"{b}.ssm_d", (inner,)), (f"{b}.ssm_out.weight", (inner, d))]
    return shapes
