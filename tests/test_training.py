from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from edgeopt import datasets, zoo
from edgeopt.errors import DataError
from edgeopt.training import TrainHistory, evaluate, fit, predict_logits
from helpers import tiny_cnn, tiny_mlp, toy_classification


def _digits_lenet(seed: int = 0):
    torch.manual_seed(seed)
    splits = datasets.load("digits")
    return splits, zoo.create("lenet300", splits.input_shape, splits.num_classes)


def test_fit_beats_chance_on_digits_and_keeps_best_val():
    splits, net = _digits_lenet()
    before = evaluate(net, splits.test)
    history = fit(net, splits.train, splits.val, epochs=2, progress=False)
    assert isinstance(history, TrainHistory)
    assert len(history.train_loss) == len(history.val_accuracy) == 2
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.best_val_accuracy == max(history.val_accuracy)
    assert evaluate(net, splits.val) == pytest.approx(history.best_val_accuracy)
    assert evaluate(net, splits.test) > max(0.8, before)  # chance is 0.1
    assert not net.training


def test_fit_is_deterministic_for_a_seed():
    splits, a = _digits_lenet()
    _, b = _digits_lenet()
    _, c = _digits_lenet()
    fit(a, splits.train, epochs=1, seed=5, progress=False)
    fit(b, splits.train, epochs=1, seed=5, progress=False)
    fit(c, splits.train, epochs=1, seed=6, progress=False)
    pa, pb, pc = (dict(m.named_parameters())["fc1.weight"] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_fit_leaves_global_rng_untouched():
    data, net = toy_classification(64), tiny_mlp()
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    fit(net, data, epochs=1, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_fit_accepts_dataloader_and_list_of_batches_with_custom_loss():
    data = toy_classification(128)
    calls = []

    def loss_fn(logits, targets, inputs):
        calls.append(inputs.shape[0])
        return torch.nn.functional.cross_entropy(logits, targets)

    fit(tiny_mlp(), DataLoader(data, batch_size=32), epochs=1, loss_fn=loss_fn, progress=False)
    batches = [(data.tensors[0][i : i + 32], data.tensors[1][i : i + 32]) for i in (0, 32)]
    history = fit(tiny_mlp(), batches, batches, epochs=2, progress=False)
    assert calls == [32] * 4 and len(history.val_accuracy) == 2


def test_after_step_runs_every_step():
    steps = []
    fit(tiny_mlp(), toy_classification(64), epochs=2, batch_size=16, progress=False,
        after_step=lambda m: steps.append(1))
    assert len(steps) == 8


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "fit.epochs must be an int >= 1; got 0."),
    ({"epochs": 1, "lr": 0.0}, "fit.lr must be a float > 0; got 0.0."),
    ({"epochs": 1, "batch_size": 0}, "fit.batch_size"),
    ({"epochs": 1, "schedule": "step"}, "fit.schedule"),
])
def test_fit_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(tiny_mlp(), toy_classification(8), **kwargs)


def test_fit_rejects_unlabeled_and_one_shot_data():
    inputs = toy_classification(32).tensors[0]
    with pytest.raises(DataError, match="no targets"):
        fit(tiny_mlp(), [inputs], epochs=1, progress=False)
    with pytest.raises(TypeError, match="re-iterable"):
        fit(tiny_mlp(), iter([(inputs, inputs)]), epochs=1, progress=False)


def test_evaluate_and_predict_logits_accept_all_data_forms():
    data = toy_classification(40, shape=(1, 4, 4))
    net = tiny_cnn().train()
    acc = evaluate(net, data, batch_size=16)
    assert net.training, "evaluate restores the previous mode"
    assert evaluate(net, DataLoader(data, batch_size=7)) == pytest.approx(acc)
    assert evaluate(net, [data.tensors]) == pytest.approx(acc)
    logits = predict_logits(net, data)
    assert logits.shape == (40, 4)
    assert torch.allclose(predict_logits(net, data.tensors[0]), logits, atol=1e-6)
    expected = (logits.argmax(1) == data.tensors[1]).float().mean().item()
    assert acc == pytest.approx(expected)


def test_evaluate_needs_labels_and_data():
    with pytest.raises(DataError, match="labeled"):
        evaluate(tiny_mlp(), torch.zeros(4, 16))
    with pytest.raises(DataError, match="empty"):
        evaluate(tiny_mlp(), [])
