"""Reading the user's data: npz arrays, image folders, factories; splits and clear errors."""

import numpy as np
import pytest
import torch
from user_files import blobs, write_npz

from edgeopt.errors import ConfigError
from edgeopt.sources.data import load_data, parse_data_source


def splits_of(tmp_path, raw, shape=None, seed=0):
    return load_data(parse_data_source(raw, tmp_path), shape, seed)


def test_npz_train_test_with_val_split_from_train(tmp_path):
    write_npz(tmp_path)
    splits = splits_of(tmp_path, {"train": "train.npz", "test": "test.npz"}, (6,))
    assert len(splits.train) + len(splits.val) == 400 and len(splits.test) == 120
    assert len(splits.val) == 40  # 10 % of train
    assert splits.num_classes == 4 and splits.input_shape == (6,)
    x, y = splits.test[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    again = splits_of(tmp_path, {"train": "train.npz", "test": "test.npz"})
    assert torch.equal(again.val.tensors[0], splits.val.tensors[0])  # seeded


def test_unlabeled_npz_and_token_ids(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.random.default_rng(0).integers(1, 99, (50, 12)))
    splits = splits_of(tmp_path, {"train": "a.npz", "test": "a.npz"})
    assert splits.num_classes == 0
    assert splits.test[0][0].dtype == torch.int64  # token ids stay integers
    assert len(splits.test[0]) == 1  # no label


def test_normalization_is_per_channel(tmp_path):
    x = np.ones((20, 2, 3, 3), np.float32)
    x[:, 1] = 5.0
    np.savez(tmp_path / "d.npz", x=x)
    splits = splits_of(tmp_path, {"train": "d.npz", "test": "d.npz", "mean": [1, 3],
                                  "std": [1, 2]})
    sample = splits.test[0][0]
    assert torch.allclose(sample[0], torch.zeros(3, 3)) and torch.allclose(sample[1],
                                                                             torch.ones(3, 3))


def test_image_folder_resized_and_split_by_class(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, colour in (("cat", 0), ("dog", 2)):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 60, (20, 30, 3), dtype=np.uint8)
            pixels[..., colour] += 190
            Image.fromarray(pixels).save(tmp_path / "img" / cls / f"{i}.png")
    splits = splits_of(tmp_path, {"folder": "img"}, (3, 16, 16))
    assert splits.classes == ("cat", "dog") and splits.num_classes == 2
    assert splits.input_shape == (3, 16, 16)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20
    assert sorted(splits.test.tensors[1].tolist()) == [0, 0, 1, 1]  # stratified 20 %
    x, y = splits.test[0]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert int(x.mean(dim=(1, 2)).argmax()) == (0 if y == 0 else 2)


def test_data_factory(tmp_path):
    (tmp_path / "user_data.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "class S:\n"
        "    train = TensorDataset(torch.randn(30, 4), torch.arange(30) % 3)\n"
        "    test = TensorDataset(torch.randn(9, 4), torch.arange(9) % 3)\n"
        "def splits(scale=1):\n    return S()\n")
    splits = splits_of(tmp_path, {"factory": "user_data:splits", "kwargs": {"scale": 2}})
    assert splits.num_classes == 3 and len(splits.test) == 9 and len(splits.val) == 3


@pytest.mark.parametrize("raw,message", [
    ({"train": "train.npz"}, "recipe.data.test is required"),
    ({"train": "train.npz", "test": "nope.npz"}, "recipe.data.test: file"),
    ({"train": "train.csv", "test": "test.npz"}, "recipe.data.train must be an .npz"),
    ({"folder": "x", "train": "train.npz"}, "exactly one of"),
    ({"train": "train.npz", "test": "test.npz", "mean": [0.5]}, "go together"),
    ({"train": "train.npz", "test": "test.npz", "mean": [0.5], "std": [0]}, "recipe.data.std"),
    ({"train": "train.npz", "test": "test.npz", "shuffle": True}, "recipe.data.shuffle"),
    ({"factory": "nomodule"}, "recipe.data.factory must be"),
])
def test_bad_data_mappings_name_the_field(tmp_path, raw, message):
    write_npz(tmp_path)
    with pytest.raises(ConfigError, match=message):
        parse_data_source(raw, tmp_path)


def test_bad_files_and_shapes_name_the_field(tmp_path):
    write_npz(tmp_path)
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((3, 6)))
    with pytest.raises(ConfigError, match="recipe.data.train: nox.npz has no array 'x'"):
        splits_of(tmp_path, {"train": "nox.npz", "test": "test.npz"})
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="recipe.data.test: .* not a readable .npz"):
        splits_of(tmp_path, {"train": "train.npz", "test": "bad.npz"})
    with pytest.raises(ConfigError, match=r"samples have shape \[6\] but "
                                          r"recipe.model.input_shape is \[3, 2\]"):
        splits_of(tmp_path, {"train": "train.npz", "test": "test.npz"}, (3, 2))
    np.savez(tmp_path / "short.npz", **{**blobs(10, 0), "y": np.zeros(4, np.int64)})
    with pytest.raises(ConfigError, match="'y' has 4 entries for 10 samples"):
        splits_of(tmp_path, {"train": "short.npz", "test": "test.npz"})
    np.savez(tmp_path / "nan.npz", x=np.full((5, 6), np.nan, np.float32))
    with pytest.raises(ConfigError, match="NaN"):
        splits_of(tmp_path, {"train": "nan.npz", "test": "test.npz"})
