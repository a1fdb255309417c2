"""GPTQ vs nearest rounding on a small trained CNN: the logits' SQNR against fp32 and top-1
agreement on test inputs the calibration never saw (README, "GPTQ on CNNs").

    .venv/bin/python bench/bench_gptq_cnn.py --model resnet8 --bits 4
"""

from __future__ import annotations

import argparse
import math

import torch

import edgeopt as eo


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = float((reference - other).pow(2).mean())
    return 10 * math.log10(float(reference.pow(2).mean()) / max(noise, 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet8", help="a zoo model with mnist5k weights")
    parser.add_argument("--bits", type=int, default=8, help="weight bits")
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    splits = eo.datasets.load("mnist5k", seed=0)
    model = eo.zoo.pretrained(args.model, "mnist5k")
    calib = torch.stack([splits.train[i][0] for i in range(args.calib)])
    test = torch.stack([splits.test[i][0] for i in range(args.test)])
    with torch.no_grad():
        want = model(test)
    weights = eo.QuantSpec(bits=args.bits)
    print("| model | weight bits | rounding | logits SQNR vs fp32 (dB) | top-1 agreement |")
    print("|---|---|---|---|---|")
    for rounding in ("nearest", "gptq"):
        q = eo.apply(model, eo.QuantConfig(weights=weights, rounding=rounding), data=[calib])
        with torch.no_grad():
            got = q(test)
        agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
        print(f"| {args.model} | {args.bits} | {rounding} | {sqnr_db(want, got):.2f} | {agree:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
