"""Benchmark: seconds and peak memory of an encoder–decoder's route across the two stacks
(`llm_flow.seq2seq_route`) on a random model of opus-mt's shape (Marian: d_model 512, 6 encoder
and 6 decoder layers, 8 heads, FFN 2048), for source and target of T tokens each.

    python -m benchmarks.seq2seq_routes            # T = 16, 64, 128
    python -m benchmarks.seq2seq_routes --quick    # T = 16, 64

The first route on a run computes every block's contributions (one hooked forward pass and the
proximities of every part through the decoder engine's kernel, routes/proximity.py); later routes on the same
run, at any position or threshold, reuse them and only walk the graph. No hub access is needed:
the weights are random, the shapes are opus-mt's.
"""

from __future__ import annotations

import argparse

from benchmarks import memory

FULL_LENGTHS = (16, 64, 128)
QUICK_LENGTHS = (16, 64)
MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 16 and 64 only")
    args = parser.parse_args()
    import torch
    from transformers import MarianConfig, MarianMTModel

    import llm_flow
    from tests.tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=1024,
        decoder_start_token_id=2, pad_token_id=2, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = llm_flow.load_model(MarianMTModel(config).eval(), tokenizer=tokenizer, max_prompt_tokens=1024)
    print(f"opus-mt-shaped Marian (random weights), torch threads {torch.get_num_threads()}; {memory.DESCRIPTION}")
    print(f"{'T':>5} {'run_pair s':>11} {'first route s':>14} {'peak MiB':>9} {'next route s':>13} {'edges':>6}")
    for n in QUICK_LENGTHS if args.quick else FULL_LENGTHS:
        ids = list(range(5, 5 + n))
        run = memory.measure(lambda: model.run_pair_ids(ids, ids))
        first = memory.measure(lambda: llm_flow.seq2seq_route(run.result, -1, 0.04))
        again = memory.measure(lambda: llm_flow.seq2seq_route(run.result, n // 2, 0.02))
        print(f"{n:>5} {run.seconds:>11.2f} {first.seconds:>14.2f} {first.peak_bytes / MIB:>9.0f} "
              f"{again.seconds:>13.3f} {first.result.number_of_edges():>6}")  # fmt: skip


if __name__ == "__main__":
    main()
