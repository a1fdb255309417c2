"""Run by tests/test_distributed.py, once alone and once under `torchrun --nproc_per_node 2`:
trains tiny models with fit, pruning recovery, QAT and distillation and (rank 0 only) saves
their weights to OUT.safetensors."""

import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

import edgeopt as eo
from edgeopt import distributed
from edgeopt.pruning.config import AdvancedPrune
from edgeopt.training import fit


def mlp(seed: int, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))


def main(out: str) -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    dataset = TensorDataset(x, y)
    batches = [(x[i:i + 24], y[i:i + 24]) for i in range(0, 96, 24)]
    results = {}
    model = mlp(1)
    fit(model, dataset, epochs=3, batch_size=16, lr=1e-2, progress=False)  # DataLoader path
    results["fit_dataset"] = model
    model = mlp(2)
    fit(model, batches, epochs=3, lr=1e-2, progress=False)  # list of batches: rank-sharded
    results["fit_batches"] = model
    prune = eo.PruneConfig(sparsity=0.5, finetune_epochs=2,
                           advanced=AdvancedPrune(batch_size=16, progress=False))
    results["prune"] = eo.apply(mlp(3), prune, data=dataset)
    results["qat"] = eo.apply(mlp(4), eo.QuantConfig(method="qat", epochs=2), data=batches)
    teacher = mlp(5, 32)
    results["distill"] = eo.apply(mlp(6, 8), eo.DistillConfig(epochs=3, batch_size=16,
                                                              val_fraction=0.0),
                                  data=dataset, teacher=teacher)
    if distributed.is_main():
        tensors = {f"{name}.{key}": value.detach().float().contiguous()
                   for name, module in results.items()
                   for key, value in module.state_dict().items()
                   if name != "qat" and value.is_floating_point()}
        with torch.no_grad():  # QAT's weights are integers now: compare what the model computes
            tensors["qat.logits"] = results["qat"](x).contiguous()
        tensors["world_size"] = torch.tensor([float(distributed.world_size())])
        save_file(tensors, out)
    distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
