from __future__ import annotations

import pytest
import torch

from edgeopt import datasets
from edgeopt.errors import DataError

EXPECTED = {
    "mnist5k": ((1, 28, 28), 10, 5000),
    "digits": ((1, 8, 8), 10, 1797),
    "basic-motions": ((6, 100), 4, 80),
}


def test_names_lists_all_builtins():
    assert datasets.names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_classes_and_dtypes(name):
    shape, num_classes, total = EXPECTED[name]
    splits = datasets.load(name)
    assert splits.name == name
    assert splits.input_shape == shape and splits.num_classes == num_classes
    assert datasets.spec(name) == (shape, num_classes)
    assert sum(len(part) for part in (splits.train, splits.val, splits.test)) == total
    for part in (splits.train, splits.val, splits.test):
        x, y = part.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape
        assert torch.isfinite(x).all()
        assert set(y.unique().tolist()) == set(range(num_classes))  # stratified: every class


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_normalized_with_train_statistics(name):
    splits = datasets.load(name)
    x = splits.train.tensors[0]
    dims = [0, *range(2, x.dim())]  # per channel
    assert torch.allclose(x.mean(dim=dims), torch.zeros(x.shape[1]), atol=1e-4)
    assert torch.allclose(x.std(dim=dims), torch.ones(x.shape[1]), atol=1e-2)
    assert len(splits.mean) == len(splits.std) == x.shape[1]


def _rows(dataset) -> set[bytes]:
    return {row.numpy().tobytes() for row in dataset.tensors[0]}


def test_splits_deterministic_per_seed_and_differ_across_seeds():
    a, b, c = (datasets.load("digits", seed=s) for s in (0, 0, 1))
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).tensors[0], getattr(b, part).tensors[0])
        assert torch.equal(getattr(a, part).tensors[1], getattr(b, part).tensors[1])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])


@pytest.mark.parametrize("name", ["digits", "basic-motions"])
def test_splits_do_not_overlap(name):
    splits = datasets.load(name)
    train, val, test = (_rows(p) for p in (splits.train, splits.val, splits.test))
    assert not train & val and not train & test and not val & test


def test_basic_motions_keeps_official_test_split():
    # The official split has 40 test series (10 per class); val is carved from train only.
    splits = datasets.load("basic-motions", seed=3)
    assert len(splits.test) == 40 and len(splits.train) + len(splits.val) == 40
    assert torch.equal(splits.test.tensors[1].bincount(), torch.tensor([10, 10, 10, 10]))
    assert splits.classes == ("badminton", "running", "standing", "walking")


def test_normalize_maps_raw_inputs_like_the_splits():
    splits = datasets.load("digits")
    raw = torch.full((2, *splits.input_shape), 0.5)
    expected = (0.5 - splits.mean[0]) / splits.std[0]
    assert torch.allclose(splits.normalize(raw), torch.full_like(raw, expected))


def test_cached_reload_is_cheap_and_isolated():
    first = datasets.load("digits")
    first.train.tensors[0].add_(100.0)  # mutating one result must not leak into the next
    second = datasets.load("digits")
    assert second.train.tensors[0].abs().max() < 100.0


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError, match="mnist5k") as info:
        datasets.load("cifar10")
    assert "cifar10" in str(info.value) and "basic-motions" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_seed_type():
    with pytest.raises(TypeError, match="seed"):
        datasets.load("digits", seed="0")
