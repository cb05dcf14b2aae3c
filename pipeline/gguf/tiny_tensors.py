"""The shape of a tiny model (TinySpec) and the tensors it has per architecture (name and ggml shape), as
src/models/<arch>.cpp of the vendored llama.cpp loads them: attention and FFN per layer, experts, latent
attention, state-space layers. tiny_model.py writes them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model. Widths are multiples of 256 by default so k-quants apply without fallback."""

    arch: str = "llama"  # llama | gemma3 | qwen3 | qwen3moe | gpt-oss | deepseek2 | glm4moe | mamba
    n_layers: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_vocab: int = 320
    context_length: int = 4096
    dtype: str = "f32"  # f32 | f16: type of the 2-D weights (norms stay f32)
    tie_embeddings: bool = False  # no output.weight: llama.cpp reuses token_embd
    seed: int = 0
    head_dim_override: int | None = None  # {arch}.attention.key_length/value_length when != n_embd/n_head
    sliding_window: int = 512  # gemma3 only: tokens an SWA layer attends to
    swa_pattern: int | None = None  # gemma3 only: every Nth layer is full attention (llama.cpp's default: 6)
    extra_kv: dict[str, object] = field(default_factory=dict)
    chat_template: str | None = CHAT_TEMPLATE  # None: a GGUF without tokenizer.chat_template, as many are
    # Mixture of experts (llama with n_expert > 0 is Mixtral-shaped; qwen3moe and gpt-oss need experts):
    # n_expert routed experts per layer of width n_ff_exp (default n_ff), n_expert_used of them per token.
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int | None = None
    n_expert_shared: int = 0  # deepseek2, glm4moe: shared experts, n_ff_exp wide each
    n_dense_lead: int = 0  # deepseek2, glm4moe: the first layers have a dense FFN (n_ff) instead of experts
    n_nextn: int = 0  # deepseek2, glm4moe: multi-token-prediction blocks after the n_layers (in block_count)
    # deepseek2's multi-head latent attention: the KV cache holds the kv_lora_rank latent plus the rope part
    q_lora_rank: int = 128
    kv_lora_rank: int = 128
    qk_rope_dim: int = 32
    qk_nope_dim: int = 32
    v_head_dim: int = 64
    split_max_tensors: int = 0  # > 0: a gguf-split model, `path-0000k-of-0000n.gguf` (the first is returned)
    # mamba only (no attention, no FFN: n_head, n_head_kv and n_ff are ignored); d_inner is 2 * n_embd,
    # the only expansion llama.cpp supports
    ssm_conv_kernel: int = 4
    ssm_state_size: int = 16
    ssm_time_step_rank: int | None = None  # None: ceil(n_embd / 16), as the Mamba reference code

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.n_embd // self.n_head

    @property
    def expert_width(self) -> int:
        return self.n_ff_exp or self.n_ff

    @property
    def ssm_inner_size(self) -> int:
        return 2 * self.n_embd

    @property
    def ssm_dt_rank(self) -> int:
        return self.ssm_time_step_rank or -(-self.n_embd // 16)

    def with_(self, **changes: object) -> TinySpec:
        return replace(self, **changes)  # type: ignore[arg-type]


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
