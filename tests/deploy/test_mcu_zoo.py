"""The MLPerf Tiny zoo models go through edgeopt's int8 path to the integer IR."""

import numpy as np
import torch

import edgeopt as eo
from edgeopt.deploy import reference
from edgeopt.deploy.lower import lower_model


def test_fc_autoencoder_folds_linear_batch_norms_and_lowers():
    torch.manual_seed(0)
    net = eo.zoo.create("fc_autoencoder", (64,), 2).eval()
    calib = torch.randn(64, 64)
    applied = eo.apply_with_stats(net, eo.QuantConfig(), data=[calib])
    assert applied.stats["quant"].folded_batch_norms == 9
    graph = lower_model(applied.model, calib[:1], calibration=calib[:32])
    assert [op.kind for op in graph.ops] == ["fully_connected"] * 10
    x = reference.quantize_input(graph, calib[:4].numpy())
    out = np.stack([reference.run(graph, row[None])[0].reshape(-1) for row in x])
    assert out.shape == (4, 64) and out.dtype == np.int8
    with torch.no_grad():
        want = applied.model(calib[:4]).numpy()
    q = graph.tensors[graph.outputs[0]].qparams
    got = (out.astype(np.float32) - int(q.zero_point)) * float(q.scale)
    cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.99
