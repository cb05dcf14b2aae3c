"""The exact knapsack behind budget quants: from each group's bytes and measured cost per type, the mixes no
other mix beats in both size and cost (a Pareto front), the best one within a budget, one step down."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel

from pipeline.llama.mix import LADDER, OTHER, GroupSizes, TypeMix, whole_group


class Sensitivity(BaseModel):
    group: str
    type: str
    kld_mean: float  # the model with only this group (or layer band) at this type, the rest at Q8_0
    bytes: int


RUNG_OF = {rung.ggml: rung for rung in LADDER}


def mix_front(sizes: GroupSizes, cost: dict[str, dict[str, float]], limit_bytes: int | None = None) -> list[Front]:
    """Every mix no other mix beats in both size and summed cost, smallest first (cost falls as size grows).

    Grown per base type (the lowest type used, which tensors of no group take) group by group, dominated
    partial mixes dropped as they appear, so the front stays small: an exact knapsack."""
    groups = sorted(cost)
    complete: list[Front] = []
    for base in LADDER:
        if not all(base.ggml in cost[g] for g in groups):
            continue
        fixed = sizes.header_bytes + sizes.groups.get(OTHER, {}).get(base.ggml, 0)
        front: list[tuple[int, float, dict[str, str]]] = [(fixed, 0.0, {})]
        for group in groups:
            grown = [
                (size + sizes.groups[group][kind], total + cost[group][kind], {**choice, group: kind})
                for size, total, choice in front
                for kind in cost[group]
                if LADDER.index(RUNG_OF[kind]) >= LADDER.index(base)
            ]
            front = _pareto([g for g in grown if limit_bytes is None or g[0] <= limit_bytes])
        complete += [Front(size, total, TypeMix(types=choice)) for size, total, choice in front
                     if base.ggml in choice.values()]  # fmt: skip
    return [Front(*item) for item in _pareto([(f.size_bytes, f.cost, f.mix) for f in complete])]


class Front(NamedTuple):
    size_bytes: int
    cost: float  # summed KLD increase over the all-Q8_0 baseline
    mix: TypeMix


def _pareto(items: list[tuple[int, float, Any]]) -> list[tuple[int, float, Any]]:
    kept: list[tuple[int, float, Any]] = []
    for item in sorted(items, key=lambda i: (i[0], i[1])):
        if not kept or item[1] < kept[-1][1]:
            kept.append(item)
    return kept


def best_mix(sizes: GroupSizes, cost: dict[str, dict[str, float]], budget_bytes: int) -> TypeMix | None:
    """The mix of least summed cost whose exact size fits the budget (None if even the cheapest does not)."""
    front = mix_front(sizes, cost, budget_bytes)
    return front[-1].mix if front else None


def costs_over_baseline(found: list[Sensitivity]) -> dict[str, dict[str, float]]:
    """KLD added by each group's type over the all-Q8_0 baseline; noise below the baseline counts as none.

    A layer band is probed at one type only (alone at the cheapest); it takes its whole group's cost at every
    type in proportion to its probe, so the bands of a group add up to the group as measured."""
    top = LADDER[-1].ggml
    baseline = {s.group: s.kld_mean for s in found if s.type == top}
    cost: dict[str, dict[str, float]] = {}
    probes: dict[str, float] = {}
    for s in found:
        if s.group in baseline:
            cost.setdefault(s.group, {})[s.type] = max(s.kld_mean - baseline[s.group], 0.0)
        else:
            probes[s.group] = max(s.kld_mean - baseline[whole_group(s.group)], 0.0)
    for whole in {whole_group(band) for band in probes}:
        bands = [band for band in probes if whole_group(band) == whole]
        total = sum(probes[band] for band in bands)
        for band in bands:
            share = probes[band] / total if total > 0 else 1 / len(bands)
            cost[band] = {kind: value * share for kind, value in cost[whole].items()}
        del cost[whole]
    return cost


def step_down(mix: TypeMix, cost: dict[str, dict[str, float]], sizes: GroupSizes) -> TypeMix | None:
    """One group one type lower: the step adding the least cost per byte saved (None at the bottom)."""
    steps = []
    for group, kind in mix.types.items():
        lower = [k for k in cost[group] if LADDER.index(RUNG_OF[k]) < LADDER.index(RUNG_OF[kind])]
        if lower:
            below = max(lower, key=lambda k: LADDER.index(RUNG_OF[k]))
            saved = sizes.groups[group][kind] - sizes.groups[group][below]
            steps.append(((cost[group][below] - cost[group][kind]) / max(saved, 1), group, below))
    if not steps:
        return None
    _, group, below = min(steps)
    return TypeMix(types={**mix.types, group: below})
