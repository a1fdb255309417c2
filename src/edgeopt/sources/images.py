"""A class-per-folder image tree read into arrays, resized to the model's input shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_image_folder(folder: Path, input_shape: tuple[int, ...], field: str
                      ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(N, C, H, W) float32 pixels in [0, 1], int64 labels (sorted class folders), classes."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ConfigError(f"{field} needs recipe.model.input_shape [channels (1 or 3), height, "
                          f"width]; got {list(input_shape)}.")
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if len(classes) < 1:
        raise ConfigError(f"{field}: {str(folder)!r} has no class sub-folders (one folder of "
                          "images per class).")
    images, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir()
                       if f.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise ConfigError(f"{field}: class folder {name!r} has {len(files)} image(s); "
                              f"each class needs at least 2 ({', '.join(IMAGE_SUFFIXES)}).")
        images += [_read(f, input_shape, field) for f in files]
        labels += [index] * len(files)
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def _read(path: Path, input_shape: tuple[int, ...], field: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    channels, height, width = input_shape
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"{field}: {str(path)!r} is not a readable image: {exc}") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
