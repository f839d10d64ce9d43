"""Two-process DistributedDataParallel training on CPU (gloo) through torchrun."""

import json
from pathlib import Path

import torch
from conftest import run_torchrun
from safetensors.torch import load_file

from diffiqt.models.checkpoint import find_checkpoint

WORKER = Path(__file__).parent / "ddp_worker.py"


def test_two_process_ddp_training_on_cpu(tmp_path):
    out = tmp_path / "run"
    result = run_torchrun(WORKER, out)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["first_batch_sum"] != ranks[1]["first_batch_sum"]  # each rank draws its own data
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    saved = load_file(str(find_checkpoint(out) / "model.safetensors"))
    for key in saved:
        assert torch.equal(weights[0][key], weights[1][key])  # gradients were averaged across ranks
        assert torch.equal(weights[0][key], saved[key])
    meta = json.loads((find_checkpoint(out) / "config.json").read_text())
    assert meta["step"] == 4 and meta["world_size"] == 2
    assert len((out / "train.csv").read_text().splitlines()) == 5  # rank 0 alone writes the logs
