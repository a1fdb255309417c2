"""Cost formulas against hand counts, and policies as recipe stages."""

import pytest
import torch
from torch import nn

from edgeopt.search.cost import FormulaCost, layer_bytes, peak_bytes, schedule
from edgeopt.search.space import Policy, build_space, policy_stages


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 4)).eval()


def test_flash_counts_packed_weights_int32_bias_and_requantization():
    assert layer_bytes(72, 8, 8) == 72 + 32 + 64
    assert layer_bytes(72, 8, 4) == 36 + 32 + 64
    assert layer_bytes(72, 8, 32) == 288 + 32


def test_formula_cost_of_a_mixed_policy():
    model, example = _cnn(), torch.randn(1, 1, 6, 6)
    cost = FormulaCost(example)
    policy = Policy(bits={"0": 8, "3": 4, "6": 32}, keep={})
    expected = layer_bytes(72, 8, 8) + layer_bytes(576, 8, 4) + layer_bytes(1152, 4, 32)
    assert cost.flash_bytes(model, policy) == expected
    # input 36, conv0 out 288 (bn, relu in place), conv3 out 288: peak at conv3 = 576
    assert cost.ram_bytes(model, policy) == 576


def test_keep_ratio_shrinks_the_predicted_costs():
    model, example = _cnn(), torch.randn(1, 1, 6, 6)
    cost = FormulaCost(example)
    full = cost.costs(model, Policy(bits={"0": 8, "3": 8, "6": 8}, keep={}))
    half = cost.costs(model, Policy(bits={"0": 8, "3": 8, "6": 8}, keep={"0": 0.5, "3": 0.5}))
    assert half.flash_bytes < full.flash_bytes and half.ram_bytes == full.ram_bytes // 2
    assert half.macs < full.macs


def test_peak_holds_inputs_and_outputs_of_a_step():
    steps = schedule(_cnn(), torch.randn(1, 1, 6, 6), {})
    assert peak_bytes(steps) == 576


def test_space_and_stages():
    model = _cnn()
    space = build_space(model, torch.randn(1, 1, 6, 6), "mcu")
    assert space.layers == ("0", "3", "6") and space.bit_choices == (4, 8)
    assert set(space.groups) == {"0", "3"}
    stages = policy_stages(Policy(bits={"0": 8, "3": 4, "6": 32}, keep={"0": 0.5, "3": 1.0}))
    assert stages[0]["config"]["layer_sparsity"] == {"0": 0.5}
    quant = stages[1]["config"]
    assert quant["weight_overrides"] == {"3": {"bits": 4}} and quant["exclude"] == ["6"]
    assert quant["method"] == "qat" and stages[1]["speed_guard"] is False


def test_without_labels_a_pruned_policy_recovers_by_distillation_then_ptq():
    policy = Policy(bits={"0": 8, "3": 4}, keep={"0": 0.5, "3": 1.0})
    prune, recover, quant = policy_stages(policy, epochs=2, metric="agreement")
    assert prune["technique"] == "prune" and recover["technique"] == "distill"
    assert recover["config"]["logit_loss"] == "kl" and recover["config"]["epochs"] == 2
    assert quant["config"]["method"] == "ptq"
    assert quant["config"]["weight_overrides"] == {"3": {"bits": 4}}
    assert policy_stages(policy, metric="cosine")[1]["config"]["logit_loss"] == "mse"
    unpruned = policy_stages(Policy(bits={"0": 4, "3": 4}, keep={"0": 1.0, "3": 1.0}),
                             metric="agreement")
    assert [s["technique"] for s in unpruned] == ["quantize"]  # the baseline needs no recovery


class _SlicesBySize(torch.nn.Module):
    """Slices by a size read off a tensor, as transformers' models do: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 4)

    def forward(self, x):
        return torch.relu(self.lin(x[:, : int(x.shape[1])]))


def test_a_model_torch_fx_cannot_trace_is_scheduled_from_torch_export():
    from edgeopt.search.cost import FLOAT, shaped_trace

    model, example = _SlicesBySize(), torch.randn(1, 6)
    with pytest.raises(TypeError, match="Proxy"):
        torch.fx.symbolic_trace(model)
    traced = shaped_trace(model, example)
    steps = schedule(model, example, {"lin": FLOAT}, traced)
    linear = [s for s in steps if s.target == "lin"]
    assert linear and all(s.float_out and s.numel == 4 for s in linear)
    assert all(s.numel != 24 for s in steps)  # the weight is flash, not an activation
    # the float layer's 4 outputs take 4 bytes each, not 1, beside its 6 int8 inputs
    assert peak_bytes(steps) == 6 + 4 * 4 > peak_bytes(schedule(model, example, {}, traced))


def _clusterable_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),  # depthwise
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.parametrize("bits, saves", [({}, True), ({"4": 4}, False)])
def test_a_clustered_policys_flash_is_what_the_c_export_stores(tmp_path, bits, saves):
    import edgeopt as eo
    from edgeopt.config import config_type
    from edgeopt.deploy import export_c

    model, example = _clusterable_cnn().eval(), torch.randn(1, 1, 8, 8)
    layers = {"0": 8, "2": 8, "4": 8, "8": 8, **bits}
    policy = Policy(bits=layers, keep={}, clusters=16)
    calib = [(torch.randn(8, 1, 8, 8), None)]
    applied = model
    for stage in policy_stages(policy, metric="agreement"):  # no labels: no fine-tuning
        applied = eo.apply(applied, config_type(stage["technique"]).from_dict(stage["config"]),
                           data=calib)
    info = export_c(applied, tmp_path / "c", example)
    # the prediction's weight bytes (it also counts 12 bytes of bias and requantization per
    # output channel, which CExport.weight_bytes leaves out) are the bytes the export stores
    tables = 12 * sum(m.weight.shape[0] for m in model.modules()
                      if isinstance(m, nn.Conv2d | nn.Linear))
    assert FormulaCost(example).flash_bytes(model, policy) - tables == info.weight_bytes
    forms = [layer.get("weight_form") for layer in info.layers]
    dense = FormulaCost(example).flash_bytes(model, Policy(bits=layers, keep={})) - tables
    # 8-bit: the 3x3 convolution's weights become 4-bit indices into 16 values; with that
    # layer at 4 bits already, the small layers' savings do not pay for the decoder's code
    assert ("clustered" in forms) is saves and (info.weight_bytes < dense) is saves


def test_a_clustered_policy_recovers_in_float_then_clusters_its_8_bit_layers():
    policy = Policy(bits={"0": 8, "3": 4}, keep={"0": 0.5}, clusters=16)
    prune, cluster, quant = policy_stages(policy, epochs=1)
    assert prune["config"]["finetune_epochs"] == 1  # before clustering fixes the values
    assert cluster["config"] == {"clusters": 16, "finetune_epochs": 1, "exclude": ["3"]}
    assert quant["config"]["method"] == "ptq"  # QAT would move weights off the shared values
    assert Policy.from_dict(policy.to_dict()) == policy and policy.label().endswith("C16")


def test_a_factorized_policy_gives_its_low_rank_factors_the_replaced_layers_widths():
    from edgeopt.search.space import layer_bits

    policy = Policy(bits={"0": 8, "3": 4, "6": 32}, keep={"0": 0.5}, energy=0.8)
    prune, lowrank, quant = policy_stages(policy, epochs=1)
    assert lowrank["technique"] == "lowrank" and lowrank["config"]["energy"] == 0.8
    # ranks come from the pruned weights; the factors recover in float, then QAT gently
    assert "finetune_epochs" not in prune["config"] and lowrank["config"]["finetune_epochs"] == 1
    assert quant["config"]["method"] == "qat" and quant["config"]["lr"] == 1e-4
    assert quant["config"]["weight_overrides"] == {"3": {"bits": 4}, "3.*": {"bits": 4}}
    assert quant["config"]["exclude"] == ["6", "6.*"]
    assert [layer_bits(policy.bits, n) for n in ("3", "3.1", "6.0", "0", "9")] == [4, 4, 32, 8, 8]
    clustered = Policy(bits=policy.bits, keep=policy.keep, clusters=16, energy=0.8)
    prune, lowrank, cluster, _ = policy_stages(clustered, epochs=1)
    # recovery in float follows the last change of shape, before clustering fixes the values
    assert "finetune_epochs" not in prune["config"] and lowrank["config"]["finetune_epochs"] == 1
    assert cluster["config"]["exclude"] == ["3", "3.*", "6", "6.*"]
    assert Policy.from_dict(clustered.to_dict()) == clustered
    assert clustered.label().endswith("C16 E0.8") and "energy" not in Policy({}, {}).to_dict()


def _low_rank_cnn() -> nn.Module:
    """A CNN whose second convolution and first Linear hold rank-3 weights: factorized at any
    energy they keep 3 directions, which saves parameters and MACs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(),
                          nn.Linear(24, 10))
    with torch.no_grad():
        for index in (2, 6):
            weight = model[index].weight
            rows, cols = weight.shape[0], weight[0].numel()
            weight.copy_((torch.randn(rows, 3) @ torch.randn(3, cols)).reshape(weight.shape))
    return model.eval()


def test_a_factorized_policys_costs_are_what_the_c_export_stores(tmp_path):
    import edgeopt as eo
    from edgeopt.config import config_type
    from edgeopt.deploy import export_c
    from edgeopt.lowrank.layers import Factorized
    from edgeopt.search.cost import shaped_copy
    from edgeopt.search.space import layer_bits

    model, example = _low_rank_cnn(), torch.randn(1, 1, 8, 8)
    policy = Policy(bits={"0": 8, "2": 4, "6": 8, "8": 8}, keep={"0": 0.5}, energy=0.8)
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    applied, ranks = model, {}
    for stage in policy_stages(policy):  # prune, low-rank, QAT: as a trial runs them
        applied = eo.apply(applied, config_type(stage["technique"]).from_dict(stage["config"]),
                           data=data)
        ranks = ranks or {n: m.rank for n, m in applied.named_modules()
                          if isinstance(m, Factorized)}
    assert ranks["2"] <= 3 and ranks["6"] <= 3
    # the cost model's copy is factorized at the trial's ranks
    assert {n: m.rank for n, m in shaped_copy(model, example, policy).named_modules()
            if isinstance(m, Factorized)} == ranks
    bits = {n: m.spec.bits for n, m in applied.named_modules() if hasattr(m, "weight_q")}
    assert bits == {n: layer_bits(policy.bits, n) for n in bits} and bits["2.1"] == 4
    info = export_c(applied, tmp_path / "c", example)
    tables = 12 * sum(m.weight_q.shape[0] for m in applied.modules() if hasattr(m, "weight_q"))
    predicted = FormulaCost(example).costs(model, policy)
    assert predicted.flash_bytes - tables == info.weight_bytes
    # RAM is a schedule's estimate, not exact (the C planner aligns its buffers)
    assert abs(predicted.ram_bytes - (info.ram_bytes + info.io_bytes)) <= 0.05 * info.ram_bytes
    whole = FormulaCost(example).costs(model, Policy(policy.bits, policy.keep))
    assert predicted.flash_bytes < whole.flash_bytes and predicted.macs < whole.macs
