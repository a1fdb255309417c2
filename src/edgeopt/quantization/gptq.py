"""GPTQ (Frantar et al. 2022): round weights column by column, feeding each column's rounding
error back into the columns not yet rounded, weighted by the inverse Hessian of the layer's
squared output error (H = 2 X X^T over the calibration inputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """2 X^T X / n for inputs [n, columns] (rows are samples)."""
    x = inputs.double()
    return 2.0 * x.T @ x / max(x.shape[0], 1)


def _padded_2d(inputs: torch.Tensor, weight_shape: torch.Size, hyperparameters: dict
               ) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A Conv1d/Conv2d input as [n, c, h, w] with its zero padding applied, then the kernel,
    stride and dilation as pairs (Conv1d as a Conv2d of height 1; padding "same" and "valid"
    as torch applies them)."""
    one_d = inputs.dim() == 3
    x = inputs.unsqueeze(2) if one_d else inputs
    kernel = tuple(weight_shape[2:]) if not one_d else (1, weight_shape[2])
    stride, dilation = (_pair(hyperparameters[k], one_d, 1) for k in ("stride", "dilation"))
    padding = hyperparameters["padding"]
    if isinstance(padding, str):  # "same": an odd total puts the extra row after
        totals = [0 if padding == "valid" else d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = [(t // 2, t - t // 2) for t in totals]
    else:
        pads = [(p, p) for p in _pair(padding, one_d, 0)]
    return F.pad(x, (*pads[1], *pads[0])), kernel, stride, dilation


def _pair(value: int | tuple, one_d: bool, height_1d: int) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) else tuple(value)
    if one_d:
        return (height_1d, values[0])
    return values * 2 if len(values) == 1 else values


@torch.no_grad()
def im2col(inputs: torch.Tensor, weight_shape: torch.Size, hyperparameters: dict) -> torch.Tensor:
    """Rows of a Conv1d/Conv2d input that each output position multiplies with the flattened
    weight [out, in * k...] (groups == 1)."""
    x, kernel, stride, dilation = _padded_2d(inputs, weight_shape, hyperparameters)
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # [n, in*k, positions]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _output_size(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
                 dilation: tuple[int, ...]) -> tuple[int, int]:
    height, width = ((x.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                     for i in range(2))
    return height, width


@torch.no_grad()
def patches(inputs: torch.Tensor, weight_shape: torch.Size, hyperparameters: dict,
            index: torch.Tensor) -> torch.Tensor:
    """The rows of im2col(inputs) at flat output indices `index` (sample * positions +
    position) without unfolding the whole input: [len(index), in * k...]. Any groups: a row
    holds every input channel, in the weight's (channel, kernel...) order."""
    x, kernel, stride, dilation = _padded_2d(inputs, weight_shape, hyperparameters)
    height, width = _output_size(x, kernel, stride, dilation)
    sample, position = index // (height * width), index % (height * width)
    top = (position // width * stride[0]).unsqueeze(1) + torch.arange(kernel[0]) * dilation[0]
    left = (position % width * stride[1]).unsqueeze(1) + torch.arange(kernel[1]) * dilation[1]
    picked = x[sample[:, None, None], :, top[:, :, None], left[:, None, :]]  # [r, kh, kw, c]
    return picked.permute(0, 3, 1, 2).reshape(index.shape[0], -1)


@torch.no_grad()
def gptq(weight: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
         qmin: int, qmax: int, *, block_size: int = 128, damping: float = 0.01) -> torch.Tensor:
    """Integer weights [rows, columns] (as float) for `weight` on the grid (scale, zero_point,
    both shaped like weight), minimizing the output error whose Hessian is `h`."""
    w = weight.double().clone()
    scale, zero = scale.double(), zero_point.double()
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    columns = w.shape[1]
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, errors = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start,
                                                             dtype=w.dtype)
        inverse = h_inv[start:end, start:end]
        for i in range(end - start):
            column, s, z = block[:, i], scale[:, start + i], zero[:, start + i]
            rounded = torch.clamp(torch.round(column / s) + z, qmin, qmax)
            q[:, start + i] = rounded
            error = (column - (rounded - z) * s) / inverse[i, i]
            block[:, i:] -= error.unsqueeze(1) @ inverse[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return q.float()
