"""Budget-guided seeds: narrow where it saves the most until the policy fits, then buy 8-bit
weights back with what is left."""

from types import SimpleNamespace

import torch
from torch import nn

from edgeopt.search.budget import Budget
from edgeopt.search.cost import FormulaCost
from edgeopt.search.seeds import budget_guided
from edgeopt.search.space import build_space


def _ctx(flash: int) -> SimpleNamespace:
    torch.manual_seed(0)
    # conv "3" holds most weights (16 * 16 * 9): narrowing it saves the most flash
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 6 * 6, 4)).eval()
    example = torch.randn(1, 1, 6, 6)
    budget = Budget(target="cortex-m4", kind="mcu", flash_bytes=flash, ram_bytes=None,
                    latency_ms=None)
    return SimpleNamespace(base=model, space=build_space(model, example, "mcu"), budget=budget,
                           cost=FormulaCost(example))


def _flash(ctx, policy) -> int:
    return ctx.cost.flash_bytes(ctx.base, policy)


def test_seeds_fit_and_narrow_only_where_it_pays():
    ctx = _ctx(flash=3_700)
    full4 = _flash(ctx, ctx.space.uniform(4, 1.0))
    assert full4 > 3_700  # uniform 4-bit does not fit
    narrow, mixed = budget_guided(ctx)
    assert _flash(ctx, narrow) <= 3_700 and _flash(ctx, mixed) <= 3_700
    assert set(narrow.bits.values()) == {4}
    narrowed = {g for g, k in narrow.keep.items() if k < 1.0}
    assert narrowed and len(narrowed) < len(ctx.space.groups)  # not every group, as uniform does
    # the leftover budget bought 8-bit weights back, the smallest layer (the stem) first
    assert mixed.bits["0"] == 8 and _flash(ctx, mixed) > _flash(ctx, narrow)


def test_no_seed_when_nothing_fits():
    assert budget_guided(_ctx(flash=500)) == []
