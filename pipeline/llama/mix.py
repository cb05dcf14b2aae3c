"""Per-tensor type mixes: the tensor groups a budget quant gives types to, each group's exact bytes per
type from llama.cpp's own dry run, and the quantize parameters that write a mix.

A mix is written as llama-quantize writes hand-tuned quants: a `--pure` base type (no k-quant mixture
rules) with one `--tensor-type PATTERN=TYPE` per group and `--token-embedding-type`/`--output-tensor-type`
for the two big matrices. With `pure`, a tensor's type depends only on its own override and shape
(llama-quant.cpp, llama_tensor_get_type: override, then tensor_type_fallback for incompatible widths), so
a mix's tensor bytes are the sum of what per-type dry runs report for each group: exact, not estimated.
A layer band ("ffn_down:0-3") is a group whose pattern is prefixed by its layers' `blk.N` names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel

from pipeline.base.provenance import QuantParams
from pipeline.gguf.header import layer_of, read_model
from pipeline.llama.quant_plan import plan


class Rung(NamedTuple):
    """One step of the type ladder: the ggml type a group gets, and the llama ftype whose `--pure` run
    writes that type everywhere (its dry run gives every tensor's bytes at this type)."""

    ggml: str
    ftype_name: str


# Lowest first. k-quants and Q8_0 need no importance matrix (llama-quant.cpp refuses IQ1/IQ2 and Q2_K_S
# without one), so a budget quant never depends on one; given one, every rung uses it.
LADDER: tuple[Rung, ...] = (
    Rung("Q2_K", "q2_k"),
    Rung("Q3_K", "q3_k_m"),
    Rung("Q4_K", "q4_k_m"),
    Rung("Q5_K", "q5_k_m"),
    Rung("Q6_K", "q6_k"),
    Rung("Q8_0", "q8_0"),
)
RUNG_BY_TYPE = {rung.ggml: rung for rung in LADDER}

# Groups by llama.cpp's tensor names (llama-arch.cpp LLM_TENSOR_NAMES), matched as llama-quantize
# matches --tensor-type patterns (std::regex_search). Sensitive parts first; 1-D tensors never quantize.
TOKEN_EMBD, OUTPUT = "token_embd", "output"
GROUP_PATTERNS: dict[str, str] = {
    TOKEN_EMBD: r"^token_embd\.weight$",
    OUTPUT: r"^output\.weight$",
    "attn_qkv": r"\.attn_(q|k|v|qkv|q_a|q_b|kv_a_mqa|kv_b|k_b|v_b)\.weight$",
    "attn_output": r"\.attn_output\.weight$",
    "shared_experts": r"\.ffn_(up|gate|down)_shexp\.weight$",
    "ffn_up_gate": r"\.ffn_(up|gate)\.weight$",
    "ffn_down": r"\.ffn_down\.weight$",
    "experts": r"\.ffn_(up|gate|down|gate_up)_exps\.weight$",
}
OTHER = "other"  # quantizable tensors of no group (recurrent layers, ...): they take the mix's base type
_COMPILED = {group: re.compile(pattern) for group, pattern in GROUP_PATTERNS.items()}
# Groups of repeating-layer tensors, which a mix may split into layer bands ("ffn_down:0-3"): hand-tuned
# quants raise the first and last layers, so a band may earn a type its group as a whole does not.
LAYERED = ("attn_qkv", "attn_output", "shared_experts", "ffn_up_gate", "ffn_down", "experts")
Band = tuple[int, int]  # first and last layer, inclusive


def group_of(tensor_name: str, bands: Sequence[Band] = ()) -> str:
    """The group of a tensor; with `bands`, a layered group's tensor is in the band holding its layer."""
    group = next((g for g, pattern in _COMPILED.items() if pattern.search(tensor_name)), OTHER)
    layer = layer_of(tensor_name) if bands and group in LAYERED else None
    band = next((b for b in bands if layer is not None and b[0] <= layer <= b[1]), None)
    return f"{group}:{band[0]}-{band[1]}" if band else group


def whole_group(group: str) -> str:
    """The group a band belongs to ("ffn_down:0-3" -> "ffn_down"); a whole group is its own."""
    return group.split(":", 1)[0]


def pattern_of(group: str) -> str:
    """The `--tensor-type` pattern of a group or of a band (the group's pattern after the band's layer numbers)."""
    whole, _, band = group.partition(":")
    if not band:
        return GROUP_PATTERNS[whole]
    first, last = (int(n) for n in band.split("-"))
    return r"^blk\.(" + "|".join(str(n) for n in range(first, last + 1)) + ")" + GROUP_PATTERNS[whole]


def layer_bands(n_layers: int, count: int) -> list[Band]:
    """`count` contiguous bands of about equal size over layers 0..n_layers-1 (fewer when layers are few)."""
    count = max(1, min(count, n_layers))
    edges = [round(i * n_layers / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(count)]


class TypeMix(BaseModel):
    """A ggml type per group; groups absent from the model are absent here."""

    types: dict[str, str]

    @property
    def base(self) -> Rung:
        """The lowest rung used: the mix's `--pure` type, which tensors of no group take."""
        return min((RUNG_BY_TYPE[t] for t in self.types.values()), key=LADDER.index)

    def key(self) -> str:
        """A short name for this mix (output file names)."""
        return hashlib.sha256(json.dumps(self.types, sort_keys=True).encode()).hexdigest()[:10]

    def params(self, imatrix: Path | None = None, imatrix_sha256: str | None = None) -> QuantParams:
        types = dict(self.types)
        return QuantParams(
            type=self.base.ftype_name,
            pure=True,
            token_embedding_type=types.pop(TOKEN_EMBD, None),
            output_tensor_type=types.pop(OUTPUT, None),
            tensor_types={pattern_of(g): t for g, t in types.items()},
            imatrix_path=str(imatrix) if imatrix else None,
            imatrix_sha256=imatrix_sha256,
        )

    def describe(self) -> str:
        return ", ".join(f"{group}={kind.lower()}" for group, kind in self.types.items())


class GroupSizes(BaseModel):
    """Exact tensor bytes of each group at each rung, from one `--pure` dry run per rung."""

    groups: dict[str, dict[str, int]]  # group -> ggml type -> bytes (tensor data, 32-byte padded)
    tensors: dict[str, dict[str, tuple[int, str]]] = {}  # tensor -> rung ggml type -> (bytes, type written)
    header_bytes: int  # the header the dry run predicts (exact: quant_plan._output_header_bytes)
    n_elements: int
    bands: list[Band] = []  # the layer bands the layered groups are split into (none: whole groups)

    def banded(self, count: int) -> GroupSizes:
        """The same sizes with each layered group split into `count` layer bands (no new dry run)."""
        layers = [n for name in self.tensors if (n := layer_of(name)) is not None]
        bands = layer_bands(max(layers) + 1, count) if layers and count > 1 else []
        return self.model_copy(update={"groups": _grouped(self.tensors, bands), "bands": bands})

    def whole_bytes(self, group: str, kind: str) -> int:
        """A whole group's bytes at `kind`: the sum of its bands'."""
        return sum(by_type[kind] for g, by_type in self.groups.items() if whole_group(g) == group)

    def file_bytes(self, mix: TypeMix) -> int:
        base = mix.base.ggml
        return self.header_bytes + sum(
            by_type[mix.types.get(group, base)] for group, by_type in self.groups.items()
        )  # fmt: skip

    def tensor_plan(self, mix: TypeMix) -> tuple[dict[str, int], dict[str, str]]:
        """Each tensor's bytes and ggml type in `mix` (what fitting needs to place a quant not yet written)."""
        base = mix.base.ggml
        sizes, types = {}, {}
        for name, by_type in self.tensors.items():
            sizes[name], types[name] = by_type[mix.types.get(group_of(name, self.bands), base)]
        return sizes, types


def _pad(n: int) -> int:
    return n + (-n % 32)


def _grouped(tensors: dict[str, dict[str, tuple[int, str]]], bands: Sequence[Band]) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for name, by_rung in tensors.items():
        by_type = groups.setdefault(group_of(name, bands), {})
        for kind, (n_bytes, _) in by_rung.items():
            by_type[kind] = by_type.get(kind, 0) + _pad(n_bytes)
    return groups


def group_sizes(
    source: Path, params: QuantParams | None = None, on_rung: Callable[[Rung], None] | None = None
) -> GroupSizes:
    """Dry-run every rung once (`--pure`, with `params`' imatrix) and add each tensor's bytes to its group."""
    tensors: dict[str, dict[str, tuple[int, str]]] = {}
    header_bytes = 0
    for rung in LADDER:
        if on_rung is not None:
            on_rung(rung)
        base = params or QuantParams(type=rung.ftype_name)
        planned = plan(source, base.model_copy(update={"type": rung.ftype_name, "pure": True}))
        for tensor in planned.tensors:
            tensors.setdefault(tensor.name, {})[rung.ggml] = (tensor.n_bytes, tensor.type)
        header_bytes = planned.file_bytes - sum(_pad(tensor.n_bytes) for tensor in planned.tensors)
    n_elements = sum(t.n_elements for header in read_model(source) for t in header.tensors)
    return GroupSizes(groups=_grouped(tensors, ()), tensors=tensors, header_bytes=header_bytes, n_elements=n_elements)


def uniform(groups: list[str], rung: Rung) -> TypeMix:
    return TypeMix(types=dict.fromkeys(groups, rung.ggml))
