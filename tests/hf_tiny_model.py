"""Write a tiny Hugging Face llama model (random weights, a real SentencePiece tokenizer) into a folder.

Runs with the converter environment's Python (torch, transformers, sentencepiece), not mm's.
usage: python tests/hf_tiny_model.py OUT_DIR [--seed N] [--vocab N] (tests run it with the converter's Python)
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "model",
    "weights",
    "layer",
    "token",
    "matrix",
    "quant",
    "llama",
    "tiny",
    "river",
    "mountain",
    "cloud",
    "light",
    "stone",
    "paper",
    "green",
    "blue",
    "seven",
    "eleven",
    "water",
    "fire",
    "north",
    "south",
    "window",
    "garden",
    "music",
    "letter",
    "number",
    "silver",
    "orange",
    "table",
    "market",
    "winter",
    "summer",
    "coffee",
    "bread",
    "story",
]


def corpus(seed: int, sentences: int = 3000) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(sentences))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=512)
    args = parser.parse_args()
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(args.seed).splitlines()),
        model_writer=model_bytes,
        vocab_size=args.vocab,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    spm_path = args.out / "tokenizer.model"
    spm_path.write_bytes(model_bytes.getvalue())
    LlamaTokenizer(vocab_file=str(spm_path), legacy=True).save_pretrained(args.out)
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=256,  # a multiple of 256 (QK_K): the k- and i-quants apply to every matrix
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)


if __name__ == "__main__":
    main()
