"""Run by tests/recipes/test_resume.py under `torchrun --nproc_per_node 2`: a recipe run stopped
after the distillation's first epoch (`stop`), or resumed (`resume`); each rank writes which
stages it applied and which epoch checkpoints it loaded to LOG.rank<N>.json."""

import json
import sys
from pathlib import Path

import torch

import edgeopt.api
import edgeopt.checkpoint
from edgeopt import distributed
from edgeopt.recipes import run_recipe


def main(recipe: str, out: str, phase: str, log: str) -> None:
    torch.set_num_threads(1)
    calls, restored = [], []
    apply, save, restore = (edgeopt.api.apply_with_stats, edgeopt.checkpoint.Loop.save,
                            edgeopt.checkpoint.Loop.restore)

    def applying(model, config, **kwargs):
        calls.append(config.kind)
        return apply(model, config, **kwargs)

    def saving(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if phase == "stop" and "student" in str(self.path):  # its first epoch is on disk
            raise KeyboardInterrupt

    def restoring(self, *args, **kwargs):
        saved = restore(self, *args, **kwargs)
        restored.append([self.path.parent.name, saved and saved["epoch"]])
        return saved

    edgeopt.api.apply_with_stats = applying
    edgeopt.checkpoint.Loop.save = saving
    edgeopt.checkpoint.Loop.restore = restoring
    try:
        run_recipe(json.loads(Path(recipe).read_text()), out, progress=False,
                   resume=phase == "resume")
    except KeyboardInterrupt:
        pass
    Path(f"{log}.rank{distributed.rank()}.json").write_text(
        json.dumps({"calls": calls, "restored": restored}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
