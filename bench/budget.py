"""Budget quants against llama.cpp's uniform presets, side by side in one run.

For budgets equal to the written size of q2_k, q3_k_m and q4_k_m, `mm quantize --budget` chooses a
per-tensor mix on a calibration text and both are judged on a different text (mean KLD and Δppl against the
f32 source, llama-perplexity's way). Prints budget, size, bpw, KLD and Δppl of the mix and of the presets
nearest in size, and the time the search took. Models are written locally (random weights, realistic widths:
k-quants apply without fallback); texts are generated, so no network is needed.

    python bench/budget.py [--layers 4] [--embd 512] [--ff 1024] [--vocab 2048] [--presets q2_k,q3_k_m,q4_k_m]
                           [--bands 1,3]   # whole groups against layer bands (thirds), same budgets and texts
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.base.provenance import QuantParams
from pipeline.gguf.tiny_model import _WORDS, write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.llama.quantize import QuantizeRequest, quantize
from pipeline.measure.budget import BudgetRequest, Text, quantize_budget


def _text(path: Path, seed: int, words: int) -> Text:
    rng = random.Random(seed)
    path.write_text(" ".join(rng.choice(_WORDS) for _ in range(words)) + "\n")
    return Text(path=path, label=path.name, sha256="-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=512)
    parser.add_argument("--ff", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--presets", default="q2_k,q3_k_m,q4_k_m")
    parser.add_argument("--max-evals", type=int, default=36)
    parser.add_argument("--bands", default="1", help="layer bands to compare, e.g. 1,3 (one run of each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ.setdefault("MM_HOME", str(root / "home"))
        spec = TinySpec(n_layers=args.layers, n_embd=args.embd, n_head=8, n_head_kv=4, n_ff=args.ff,
                        n_vocab=args.vocab, seed=11)  # fmt: skip
        source = write_tiny_model(root / "source-f32.gguf", spec)
        calibration, evaluation = _text(root / "cal.txt", 1, 6000), _text(root / "eval.txt", 2, 6000)
        print(f"model: {spec.n_layers} layers, {spec.n_embd} wide, ffn {spec.n_ff}, vocab {spec.n_vocab}, f32")
        print(f"{'budget':>10} {'quant':>8} {'bytes':>10} {'bpw':>6} {'mean KLD':>10} {'Δppl':>8}  note")
        for preset in args.presets.split(","):
            made = quantize(QuantizeRequest(source=source, params=QuantParams(type=preset)))
            budget = made.output.stat().st_size
            for bands in (int(b) for b in args.bands.split(",")):
                started = time.perf_counter()
                result = quantize_budget(
                    BudgetRequest(source=source, budget_bytes=budget, calibration=calibration, evaluation=evaluation,
                                  n_ctx=128, calibration_chunks=4, evaluation_chunks=10, max_evals=args.max_evals,
                                  bands=bands)
                )  # fmt: skip
                seconds = time.perf_counter() - started
                mix = ", ".join(f"{group}={kind.lower()}" for group, kind in result.mix.items())
                name = "mix" if bands == 1 else f"mix/{bands}"
                for row in [result.measured, *result.presets]:
                    note = f"{result.evals} runs, {seconds:.0f} s: {mix}"
                    print(f"{budget:>10} {name if row.name == 'mix' else row.name:>8} {row.size_bytes:>10} "
                          f"{row.bits_per_weight:>6.3f} {row.kld_mean:>10.5f} {row.ppl_delta:>+8.3f}  "
                          f"{note if row.name == 'mix' else ''}")  # fmt: skip
                same = next((p for p in result.presets if p.name == preset), None)
                if same is not None:
                    print(f"{'':>10} KLD {name} / {preset}: {result.measured.kld_mean / same.kld_mean:.3f}")


if __name__ == "__main__":
    main()
