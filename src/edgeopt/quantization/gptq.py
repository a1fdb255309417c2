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


@torch.no_grad()
def im2col(inputs: torch.Tensor, weight_shape: torch.Size, hyperparameters: dict) -> torch.Tensor:
    """Rows of a Conv1d/Conv2d input that each output position multiplies with the flattened
    weight [out, in * k...] (groups == 1)."""
    if inputs.dim() == 3:  # Conv1d as a Conv2d of height 1
        inputs = inputs.unsqueeze(2)
        kernel = (1, weight_shape[2])
        params = {k: (1, v[0]) if k != "padding" else (0, v[0])
                  for k, v in hyperparameters.items() if k in ("stride", "padding", "dilation")}
    else:
        kernel = tuple(weight_shape[2:])
        params = {k: hyperparameters[k] for k in ("stride", "padding", "dilation")}
    cols = F.unfold(inputs, kernel, dilation=params["dilation"], padding=params["padding"],
                    stride=params["stride"])  # [n, in*k, positions]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


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
