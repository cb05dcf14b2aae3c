"""`mm quantize --budget`: groups cover llama.cpp's tensors, mix sizes are what llama.cpp writes, the search
is an exact knapsack, and the chosen mix beats the uniform preset of the same size on a text it never saw."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from gguf import GGUFReader
from typer.testing import Result

from pipeline.base.provenance import QuantParams
from pipeline.base.units import format_size
from pipeline.gguf.header import read_header
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.mix import LADDER, OTHER, GroupSizes, TypeMix, group_of, group_sizes
from pipeline.llama.quant_plan import plan
from pipeline.llama.quantize import QuantizeRequest, quantize
from pipeline.measure.budget import BudgetRequest, Text, quantize_budget, sizes_in_bands
from pipeline.measure.mix_search import Sensitivity, best_mix, costs_over_baseline
from tests.hub import VALID_TOKEN, LocalHub

WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "models", "run", "on"),
    *("small", "cards", "and", "layers", "fit", "in", "memory"),
]


def _text(path: Path, seed: int, words: int = 3000) -> Path:
    rng = random.Random(seed)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(words)) + "\n")
    return path


@pytest.mark.parametrize(
    "spec",
    [TinySpec(), TinySpec(arch="qwen3moe", n_expert=4, n_expert_used=2), TinySpec(arch="deepseek2", n_expert=4,
     n_expert_used=2, n_expert_shared=1, n_dense_lead=1), TinySpec(tie_embeddings=True)],
    ids=["llama", "qwen3moe", "deepseek2", "tied"],
)  # fmt: skip
def test_every_quantizable_tensor_of_an_attention_model_is_in_a_group(tmp_path: Path, spec: TinySpec) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    quantized = [t.name for t in plan(model, QuantParams(type="q8_0", pure=True)).tensors if t.type == "Q8_0"]
    assert quantized
    assert [name for name in quantized if group_of(name) == OTHER] == []


@pytest.mark.parametrize("bands", [1, 3])
def test_a_mix_is_as_large_as_llama_cpp_writes_it(tmp_path: Path, bands: int) -> None:
    """The sum of per-group dry-run bytes equals the tensor data of the file llama.cpp writes for the mix; with
    layer bands, each layer's tensors have their band's type (read back by the gguf package)."""
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layers=3))
    sizes = group_sizes(model).banded(bands)
    assert len(sizes.bands) == (3 if bands == 3 else 0)
    mix = TypeMix(types={g: LADDER[i % len(LADDER)].ggml for i, g in enumerate(sorted(sizes.groups)) if g != OTHER})
    made = quantize(QuantizeRequest(source=model, params=mix.params(), output=tmp_path / "mix.gguf"))
    header = read_header(made.output)
    written = {t.name: t.tensor_type.name for t in GGUFReader(made.output).tensors}
    for name, kind in written.items():
        group = group_of(name, sizes.bands)
        if group != OTHER:
            assert kind == mix.types[group], name
        if bands == 3 and name.startswith("blk.2.attn_output"):
            assert group == "attn_output:2-2"
    assert sizes.file_bytes(mix) - sizes.header_bytes == header.file_size - header.data_offset
    assert made.output.stat().st_size <= sizes.file_bytes(mix)


def test_layer_bands_share_their_groups_measured_cost_by_their_probes() -> None:
    found = [
        Sensitivity(group="ffn_down", type="Q8_0", kld_mean=0.01, bytes=3),
        Sensitivity(group="ffn_down", type="Q4_K", kld_mean=0.05, bytes=2),
        Sensitivity(group="ffn_down", type="Q2_K", kld_mean=0.41, bytes=1),
        Sensitivity(group="ffn_down:0-0", type="Q2_K", kld_mean=0.31, bytes=1),
        Sensitivity(group="ffn_down:1-2", type="Q2_K", kld_mean=0.11, bytes=1),
    ]
    cost = costs_over_baseline(found)
    assert set(cost) == {"ffn_down:0-0", "ffn_down:1-2"}
    assert cost["ffn_down:0-0"]["Q2_K"] == pytest.approx(0.4 * 0.75)  # 0.30 of the probes' 0.40
    assert cost["ffn_down:1-2"]["Q4_K"] == pytest.approx(0.04 * 0.25)
    assert cost["ffn_down:0-0"]["Q8_0"] == 0.0


def test_layer_bands_never_cost_the_search_its_types(tmp_path: Path) -> None:
    """Bands are used only when max_evals holds every whole group at every type plus one probe per band."""
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layers=3))
    sizes = group_sizes(model)
    n_wholes = len([g for g in sizes.groups if g != OTHER])  # 6: 4 layered (3 bands each), embedding, output
    needed = 1 + n_wholes * (len(LADDER) - 1) + 4 * 3
    text = Text(path=tmp_path / "t.txt", label="t", sha256="-")
    request = BudgetRequest(source=model, budget_bytes=1, calibration=text, bands=3, max_evals=needed)
    assert len(sizes_in_bands(request, sizes).groups) == len(sizes.groups) + 4 * 2
    assert sizes_in_bands(request.model_copy(update={"max_evals": needed - 1}), sizes) == sizes


def _brute_force(sizes: GroupSizes, cost: dict[str, dict[str, float]], budget: int) -> float | None:
    groups = sorted(cost)
    best = None
    for kinds in itertools.product(*(sorted(cost[g]) for g in groups)):
        mix = TypeMix(types=dict(zip(groups, kinds, strict=True)))
        if sizes.file_bytes(mix) <= budget:
            total = sum(cost[g][k] for g, k in mix.types.items())
            best = total if best is None else min(best, total)
    return best


def test_the_search_is_an_exact_knapsack() -> None:
    """best_mix against every combination, on random sizes and costs."""
    rng = random.Random(7)
    kinds = [r.ggml for r in LADDER]
    for _ in range(40):
        groups = [f"g{i}" for i in range(rng.randint(2, 4))]
        sizes = GroupSizes(
            groups={g: {k: (i + 1) * rng.randint(50, 150) for i, k in enumerate(kinds)} for g in [*groups, OTHER]},
            header_bytes=100, n_elements=1000,
        )  # fmt: skip
        cost = {g: {k: rng.random() / (i + 1) for i, k in enumerate(kinds)} for g in groups}
        budget = rng.randint(500, 3000)
        chosen = best_mix(sizes, cost, budget)
        expected = _brute_force(sizes, cost, budget)
        if expected is None:
            assert chosen is None
        else:
            assert chosen is not None and sizes.file_bytes(chosen) <= budget
            assert sum(cost[g][k] for g, k in chosen.types.items()) == pytest.approx(expected)


@pytest.mark.slow
def test_the_chosen_mix_beats_the_preset_of_its_size_on_unseen_text(tmp_path: Path) -> None:
    model = write_tiny_model(
        tmp_path / "m.gguf", TinySpec(n_layers=3, n_embd=256, n_ff=768, n_vocab=1024, seed=3)
    )  # fmt: skip
    budget = quantize(QuantizeRequest(source=model, params=QuantParams(type="q4_k_m"))).output.stat().st_size
    calibration = _text(tmp_path / "cal.txt", 1)
    evaluation = _text(tmp_path / "eval.txt", 2)
    result = quantize_budget(
        BudgetRequest(
            source=model, budget_bytes=budget, n_ctx=128, calibration_chunks=3, evaluation_chunks=6,
            calibration=Text(path=calibration, label="cal", sha256="-"),
            evaluation=Text(path=evaluation, label="eval", sha256="-"),
        )
    )  # fmt: skip
    assert result.output.stat().st_size <= budget
    same_size = {p.name: p for p in result.presets}["q4_k_m"]
    assert same_size.size_bytes <= budget
    assert result.measured.kld_mean < same_size.kld_mean
    assert not list((tmp_path / "mm-home" / "tmp").glob("*/*.gguf"))  # trial quants are gone


def test_budget_below_the_smallest_mix_is_one_clear_error(
    mm: Callable[..., Result], tiny_model: Path, tmp_path: Path
) -> None:
    result = mm("quantize", str(tiny_model), "--budget", "10K", "--text", str(_text(tmp_path / "t.txt", 1)))
    assert result.exit_code == 7, result.output
    assert "below the smallest mix" in result.output and "10" in result.output


def test_budget_takes_no_explicit_types(mm: Callable[..., Result], tiny_model: Path) -> None:
    result = mm("quantize", str(tiny_model), "--budget", "4M", "--to", "q4_k_m")
    assert result.exit_code == 2
    assert "--budget chooses the type of every tensor group" in result.output


def test_fit_flags_belong_to_a_fit_budget(mm: Callable[..., Result], tiny_model: Path) -> None:
    result = mm("quantize", str(tiny_model), "--budget", "4M", "--vram", "12G")
    assert result.exit_code == 2
    assert "size a --budget fit" in result.output


def test_a_fit_budget_no_mix_can_meet_is_one_clear_error(
    mm: Callable[..., Result], tiny_model: Path, tmp_path: Path
) -> None:
    """512 MiB of the class's VRAM is the CUDA context mm assumes: 100 MiB cannot hold any mix."""
    text = _text(tmp_path / "t.txt", 1)
    result = mm("quantize", str(tiny_model), "--budget", "fit", "--vram", "100M", "--ram", "1G", "--text", str(text))
    assert result.exit_code == 8, result.output
    assert "even the smallest mix" in result.output and "does not fit" in result.output


@pytest.mark.slow
def test_a_recipe_budget_builds_a_mix_profile_once(mm: Callable[..., Result], tmp_path: Path) -> None:
    """`[quantize] budget` is one more output of the build: quantize:budget, fit and publish as `<recipe>-budget`,
    stamped like the other stages (a second build skips it)."""
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layers=2, n_vocab=512, seed=5))
    budget = quantize(QuantizeRequest(source=model, params=QuantParams(type="q4_k_m"))).output.stat().st_size
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.toml").write_text(
        f'hardware = "cpu-32g"\n[source]\npath = "{model}"\n[quantize]\nbudget = "{budget}"\nbudget_max_evals = 8\n'
        f'[imatrix]\ntext = "{_text(tmp_path / "cal.txt", 1, 4000)}"\n[run]\nctx = 256\n'
    )
    first = mm("build", "tiny", "--recipes", str(recipes))
    assert first.exit_code == 0, first.output
    shown = mm("show", "tiny-budget", "--json")
    assert shown.exit_code == 0, shown.output
    profile = json.loads(shown.stdout)
    assert profile["quant"] == "mix"
    assert profile["provenance"]["quantize"]["pure"] and profile["provenance"]["quantize"]["tensor_types"]
    assert profile["blob"]["size_bytes"] <= budget
    again = mm("build", "tiny", "--recipes", str(recipes), "--json")
    assert again.exit_code == 0, again.output
    statuses = {s["name"]: s["status"] for r in json.loads(again.stdout)["recipes"] for s in r["stages"]}
    assert statuses["quantize:budget"] == "skipped"


@pytest.mark.slow
def test_a_budget_mix_and_its_figures_travel_to_the_profile_show_ls_and_the_card(
    mm: Callable[..., Result], tmp_path: Path, local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mix in `mm show --json`, `mm ls --json` and the pushed card is the one the written file holds, read by
    the gguf package (not mm's reader); its figures are the ones `mm quantize --budget` measured."""
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layers=3, n_vocab=512, seed=5))
    budget = quantize(QuantizeRequest(source=model, params=QuantParams(type="q4_k_m"))).output.stat().st_size
    made = mm(
        "quantize",
        str(model),
        "--budget",
        str(budget),
        "--max-evals",
        "8",
        "--json",
        "--text",
        str(_text(tmp_path / "cal.txt", 1)),
        "--eval-text",
        str(_text(tmp_path / "eval.txt", 2)),
    )
    assert made.exit_code == 0, made.output
    result = json.loads(made.stdout)
    output = Path(result["output"])
    reader = GGUFReader(output)
    written = {t.name: t.tensor_type.name for t in reader.tensors if t.tensor_type.name not in ("F32", "F16")}
    assert written and all(kind == result["mix"][group_of(name)] for name, kind in written.items())
    assert result["measured"]["size_bytes"] == output.stat().st_size <= budget
    n_elements = sum(int(t.n_elements) for t in reader.tensors)
    # llama.cpp's figure (its loader's "BPW"): tensor data alone, header and padding left out
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    assert result["measured"]["bits_per_weight"] == pytest.approx(tensor_bytes * 8 / n_elements, abs=0.005)

    assert mm("publish", str(output), "--hardware", "cpu-32g", "--ctx", "256", "--name", "b").exit_code == 0
    shown = json.loads(mm("show", "b", "--json").stdout)
    assert shown["quant"] == "mix"
    carried = shown["provenance"]["mix"]
    assert carried["mix"] == result["mix"] and carried["measured"] == result["measured"]
    assert carried["presets"] == result["presets"] and {p["name"] for p in carried["presets"]} >= {"q4_k_m"}
    assert carried["evaluation_text"] != carried["calibration_text"] and len(carried["evaluation_sha256"]) == 64
    label = "mix@" + format_size(budget).replace(" ", "").replace("iB", "")
    row = json.loads(mm("ls", "--json").stdout)["profiles"][0]
    assert row["quant_label"] == label and row["mix"] == carried
    text = mm("show", "b").stdout
    assert label in text and f"{result['measured']['kld_mean']:.5f}" in text
    assert all(group in text for group in result["mix"])

    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    assert mm("push", "b", "--repo", "fleet/mix-GGUF").exit_code == 0
    card = local_hub.repos["fleet/mix-GGUF"].commits[local_hub.repos["fleet/mix-GGUF"].refs["main"]]["README.md"]
    made_line, section = card.decode().split("## Budget mixes", 1)
    # a mix has no quant name for Ollama's hf.co/REPO:TAG to find it by: its line goes through mm's Modelfile
    assert "hf.co/fleet/mix-GGUF:" not in card.decode() and "mm export b > Modelfile" in card.decode()
    assert f"per-tensor types: {label}" in made_line
    for group, kind in result["mix"].items():
        assert f"| {group} | {kind.lower()} |" in section
    for judged in [result["measured"], *result["presets"]]:
        assert f"| {judged['name']} |" in section and f"{judged['kld_mean']:.5f}" in section
