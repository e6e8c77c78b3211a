"""What NF4 does to a fine-tuning update, against bf16 (notebook 03's paper-profile m_A).

    python tools/nf4_rounding.py

A 1024 x 1024 weight of std 0.02 (a Llama-sized initialisation) and a random update of a given
std are rounded to NF4 (bitsandbytes, block size 64, as ``load_causal_lm`` loads in 4-bit) and to
bf16. For each: the share of the update the rounded weights carry (the projection of
round(W + d) - round(W) onto d, over |d|^2) and the std of what they carry besides it. Runs on
the CPU in seconds; seeded, so it prints the same table each time.
"""

from __future__ import annotations

import torch


def main() -> None:
    import bitsandbytes.functional as F

    def nf4(x):
        q, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
        return F.dequantize_4bit(q, state, blocksize=64, quant_type="nf4")

    def bf16(x):
        return x.bfloat16().float()

    torch.manual_seed(0)
    weight = torch.randn(1024, 1024) * 0.02
    print(
        f"rounding error of the weight itself: NF4 std {(nf4(weight) - weight).std():.1e}, "
        f"bf16 std {(bf16(weight) - weight).std():.1e}"
    )
    print("| update std | NF4 carries | NF4 noise std | bf16 carries | bf16 noise std |")
    print("|---|---|---|---|---|")
    for std in (1e-4, 3e-4, 1e-3, 3e-3):
        update = torch.randn_like(weight) * std
        cells = []
        for rounding in (nf4, bf16):
            seen = rounding(weight + update) - rounding(weight)
            cells += [f"{(seen * update).sum() / update.square().sum():.2f}", f"{(seen - update).std():.1e}"]
        print(f"| {std:.0e} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
