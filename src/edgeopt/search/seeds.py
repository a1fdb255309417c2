"""Budget-guided seed policies: where the uniform policies must shrink every layer to fit, these
shrink only where it saves the most.

From uniform 4-bit weights, channel groups are narrowed one keep step at a time, each step on
the group whose step saves the most predicted flash + RAM (in a ResNet that is the widest
stage's inner channels, which hold most weights and matter least), until the policy fits; then
the budget left over buys 8-bit weights back, smallest layers first (stem, classifier,
shortcuts: cheap, and often the most sensitive to 4-bit). Only the cost models are used: no
training, a few dozen cost evaluations.
"""

from __future__ import annotations

from typing import Any

from edgeopt.search.space import Policy


def _excess(ctx: Any, policy: Policy) -> tuple[float, int]:
    """(total relative budget excess, flash + RAM bytes) of `policy`."""
    costs = ctx.cost.costs(ctx.base, policy)
    excess = sum(max(0.0, v) for v in ctx.budget.violations(
        costs.flash_bytes, costs.ram_bytes, costs.latency_ms))
    return excess, costs.flash_bytes + costs.ram_bytes


def _narrower(space: Any, policy: Policy) -> list[Policy]:
    """Every policy one keep step narrower in one group."""
    out = []
    for group, keep in policy.keep.items():
        lower = [k for k in space.keep_choices if k < keep]
        if lower:
            out.append(Policy(bits=policy.bits, keep={**policy.keep, group: max(lower)}))
    return out


def shrink_to_fit(ctx: Any, policy: Policy, max_steps: int = 12) -> Policy | None:
    """Narrow the group whose step lowers the excess (then the bytes) most, until it fits."""
    excess, _ = _excess(ctx, policy)
    for _ in range(max_steps):
        if excess <= 0:
            return policy
        candidates = [(_excess(ctx, p), p) for p in _narrower(ctx.space, policy)]
        if not candidates:
            return None
        (excess, _), policy = min(candidates, key=lambda c: c[0])
    return policy if excess <= 0 else None


def spend_leftover(ctx: Any, policy: Policy, weights: dict[str, int]) -> Policy:
    """Raise 4-bit layers to 8 bits, smallest first, while the policy still fits."""
    for name in sorted(policy.bits, key=lambda n: weights.get(n, 0)):
        if policy.bits[name] != 4 or 8 not in ctx.space.bit_choices:
            continue
        wider = Policy(bits={**policy.bits, name: 8}, keep=policy.keep)
        if _excess(ctx, wider)[0] <= 0:
            policy = wider
    return policy


def budget_guided(ctx: Any) -> list[Policy]:
    """The seeds (none when even the narrowest 4-bit and 8-bit policies do not fit). Under a
    latency budget on an MCU, where 4-bit layers run slower than 8-bit ones, the narrowest
    4-bit policy may miss it: the shrinking then starts from 8-bit."""
    weights = {n: m.weight.numel() for n, m in ctx.base.named_modules()
               if n in ctx.space.layers}
    starts = [b for b in (4, 8) if b in ctx.space.bit_choices
              and _excess(ctx, ctx.space.uniform(b, min(ctx.space.keep_choices)))[0] <= 0]
    if not starts:
        return []  # even the narrowest policies are over budget
    fitted = shrink_to_fit(ctx, ctx.space.uniform(starts[0], 1.0))
    if fitted is None:
        return []
    seeds = [fitted, spend_leftover(ctx, fitted, weights)]
    return [p for i, p in enumerate(seeds) if p not in seeds[:i]]
