"""Run by test_train_ddp.py under torchrun: DDP training of the tiny network; each rank records its state.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT
Writes OUT/rank{R}.safetensors (final weights) and OUT/rank{R}.json (a fingerprint of its first batch).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tiny_net  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from diffiqt.config import resolve  # noqa: E402
from diffiqt.models.checkpoint import state_tensors  # noqa: E402
from diffiqt.training import distributed  # noqa: E402
from diffiqt.training.loop import Trainer  # noqa: E402


def main(out: Path) -> None:
    tiny_net.install()
    cfg = resolve(assignments=tiny_net.TINY_TRAINING + ("steps=4", "val_every=4", 'device="cpu"'))
    trainer = Trainer(cfg, out, resume=False, progress=False)
    first_batch = next(iter(trainer.stream))["cond"]
    trainer.run()
    rank = int(os.environ["RANK"])
    save_file(state_tensors(trainer.net), str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(
        json.dumps({"first_batch_sum": float(first_batch.sum()), "world": trainer.world})
    )
    distributed.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
