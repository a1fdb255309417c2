"""Lottery tickets: iterative magnitude pruning with rewinding, each round against the dense net.

    result = lottery_ticket(zoo.create("lenet300", ...), splits.train, val_data=splits.val,
                            sparsity=0.8, rounds=5, epochs=10)
    result.rounds[0]     # the dense network: val accuracy, best epoch (training speed), seconds
    result.rounds[-1]    # the ticket with 20 % of the weights left
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from edgeopt.pruning.config import AdvancedPrune, PruneConfig


@dataclasses.dataclass
class LotteryResult:
    model: nn.Module  # the last round's ticket (zeros baked in)
    rounds: list[dict[str, Any]]  # round 0 is the dense network

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def to_markdown(self) -> str:
        lines = ["| round | weights left | val accuracy | best epoch | seconds |",
                 "|---|---|---|---|---|"]
        for r in self.rounds:
            acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} %"
            lines.append(f"| {r['round']} | {100 * (1 - r['sparsity']):.1f} % | {acc} | "
                         f"{r['best_epoch']} | {r['seconds']:.1f} |")
        return "\n".join(lines)


def lottery_ticket(
    model: nn.Module, data: Any, *, val_data: Any = None, sparsity: float = 0.8,
    rounds: int = 5, epochs: int = 5, rewind: str = "init", scope: str = "global",
    lr: float = 1e-3, advanced: AdvancedPrune | None = None,
) -> LotteryResult:
    """Train `model` (from its current, usually initial, weights), then `rounds` times: prune
    the same fraction of the remaining weights by magnitude, rewind the survivors to the
    starting weights (rewind='init') or those after `advanced.rewind_steps` steps ('early'),
    and retrain `epochs` epochs with early stopping on the validation data."""
    from edgeopt.pruning.apply import prune

    config = PruneConfig(sparsity=sparsity, structure="unstructured", criterion="magnitude",
                         scope=scope, schedule="iterative", steps=rounds, finetune_epochs=epochs,
                         lr=lr, rewind=rewind, advanced=advanced or AdvancedPrune())
    ticket, stats = prune(model, config, data, val_data=val_data)
    return LotteryResult(ticket, list(stats["prune"].rounds))
