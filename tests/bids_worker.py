"""Run by test_bids.py under torchrun: ``diffiqt ARGS`` with the tiny networks of tiny_net.py.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/bids_worker.py LOG ARGS...
Each process appends the path of every BIDS scan it enhanced to LOG/rank{R}.txt, one a line. Rank 1 starts
each scan late, so that rank 0 is done first: its exit must not stop rank 1 (torchrun stops every process
once one exits with an error).
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tiny_net  # noqa: E402

from diffiqt.cli import bids as cli_bids  # noqa: E402
from diffiqt.cli import main  # noqa: E402

DELAY = 5  # seconds before each of rank 1's scans: far longer than rank 0's work with the tiny network


def logged(enhance_scan, log: Path):
    """``enhance_scan`` (``cli_bids._enhance_scan``) that logs the scans it finished, late on rank 1."""
    rank = os.environ["RANK"]

    def enhance_and_log(job, *args) -> None:
        if rank == "1":
            time.sleep(DELAY)
        enhance_scan(job, *args)
        with open(log / f"rank{rank}.txt", "a") as file:
            file.write(f"{job.scan.relpath}\n")

    return enhance_and_log


if __name__ == "__main__":
    tiny_net.install()
    cli_bids._enhance_scan = logged(cli_bids._enhance_scan, Path(sys.argv[1]))
    sys.argv = ["diffiqt", *sys.argv[2:]]
    main()
