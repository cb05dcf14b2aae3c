"""A model's shape as llama.cpp's loader sees it: hyperparameters from the GGUF header, and where each
tensor's bytes and matrix work go (repeating layers, routed experts, input, output head).

What the memory model (fitting/memory.py) and the speed model size a model by; each rule names the llama.cpp
source it mirrors (the version vendored by llama-cpp-python 0.3.36).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.base.errors import FitError
from pipeline.gguf.header import EXPERTS_RE, GGUFHeader, layer_of

# llama.cpp's default SWA period per architecture (load_swa_pattern(ml, N) in src/models/<arch>.cpp),
# used when the GGUF has no {arch}.attention.sliding_window_pattern.
SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gemma3n": 5, "gpt-oss": 2}
# llama-arch.cpp llm_arch_is_recurrent: one recurrent state per sequence instead of a KV cache.
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})


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
