"""Task metrics on model outputs: pure functions over numpy arrays.

top1 scores against class labels; agreement, cosine and mse score a model's outputs against a
reference model's outputs on the same samples (mse uses float labels instead when it has them).
"""

from __future__ import annotations

import numpy as np

from edgeopt.errors import DataError

HIGHER_IS_BETTER = {"top1": True, "agreement": True, "cosine": True, "mse": False}


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose arg-max output is the label."""
    return float((_classes(outputs) == labels.reshape(-1)).mean())


def agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of samples whose arg-max matches the reference's arg-max."""
    return float((_classes(outputs) == _classes(reference)).mean())


def cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of the flattened outputs."""
    a, b = _flat(outputs), _flat(reference)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    sims = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return float(sims.mean())


def mse(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean squared difference over all elements."""
    a, b = _flat(outputs), _flat(reference)
    return float(((a - b) ** 2).mean())


def score(metric: str, outputs: np.ndarray, reference: np.ndarray | None,
          labels: np.ndarray | None) -> float:
    """The recipe metric of `outputs`, against labels (top1, mse with float labels) or the
    reference model's outputs (agreement, cosine, mse without labels)."""
    if metric == "top1":
        if labels is None:
            raise DataError("metric top1 needs labels; the data has none.")
        return top1(outputs, labels)
    if metric == "mse" and labels is not None and np.issubdtype(labels.dtype, np.floating):
        return mse(outputs, labels)
    if reference is None:
        raise DataError(f"metric {metric} compares with the baseline's outputs; none given.")
    if outputs.shape != reference.shape:
        raise DataError(f"outputs of shape {outputs.shape} cannot be compared with the "
                        f"baseline's {reference.shape}.")
    return {"agreement": agreement, "cosine": cosine, "mse": mse}[metric](outputs, reference)


def _classes(outputs: np.ndarray) -> np.ndarray:
    flat = outputs.reshape(outputs.shape[0], -1)
    if flat.shape[1] == 1:  # one logit per sample: binary decision at 0
        return (flat[:, 0] > 0).astype(np.int64)
    return flat.argmax(axis=1)


def _flat(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1).astype(np.float64)
