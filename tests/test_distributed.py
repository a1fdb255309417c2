"""Training under `torchrun --nproc_per_node 2` (gloo on CPU) gives the 1-process weights."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from edgeopt import distributed

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
import distributed_worker  # noqa: E402

# Float training: 2 ranks sum each batch's gradient in another order (~1e-8 apart after a few
# Adam steps). QAT rounds: an ULP can move a weight across a rounding step, so its outputs are
# compared by their mean difference (relative to their mean magnitude) and top-1 agreement.
ATOL_FLOAT = 1e-6
QAT_RELATIVE = 0.02
QAT_AGREEMENT = 0.95


def test_helpers_are_no_ops_on_one_process():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model) is model
    batches = [torch.zeros(4, 2)]
    assert distributed.shard_batches(batches) is batches
    assert distributed.weight(7) == 1.0 and distributed.sum_all([1.0, 2.0]) == [1.0, 2.0]
    loader = distributed.shuffled_loader(TensorDataset(torch.arange(10.0)), 4,
                                         torch.Generator().manual_seed(0))
    assert sorted(torch.cat([b[0] for b in loader]).tolist()) == list(range(10))
    with distributed.main_first() as main:
        assert main


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this Python")
def test_two_processes_match_one(tmp_path):
    two = tmp_path / "two.safetensors"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                           str(WORKER), str(two)], capture_output=True, text=True, env=env,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed_worker.main(str(tmp_path / "one.safetensors"))
    one, two = load_file(tmp_path / "one.safetensors"), load_file(two)
    assert one.pop("world_size").item() == 1 and two.pop("world_size").item() == 2
    assert one.keys() == two.keys()
    for name, expected in one.items():
        if name == "qat.logits":
            gap = (two[name] - expected).abs().mean() / expected.abs().mean()
            agreement = (two[name].argmax(1) == expected.argmax(1)).float().mean()
            assert gap < QAT_RELATIVE and agreement >= QAT_AGREEMENT, (gap, agreement)
        else:
            torch.testing.assert_close(two[name], expected, rtol=0, atol=ATOL_FLOAT,
                                       msg=lambda m, name=name: f"{name}: {m}")
    trained = {name.split(".")[0] for name in one}
    assert trained == {"fit_dataset", "fit_batches", "prune", "qat", "distill"}
