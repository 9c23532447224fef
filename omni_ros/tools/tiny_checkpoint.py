"""Console script `omni_ros_tiny_checkpoint OUT_DIR [--seed N]`: write a tiny random-weight
checkpoint folder in the released MiniCPM-o 4.5 layout (for tests and demos without real weights).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="omni_ros_tiny_checkpoint", description=__doc__)
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    args = parser.parse_args(argv)

    from omni_ros.model.checkpoint import write_checkpoint

    t0 = time.monotonic()
    folder = write_checkpoint(Path(args.out_dir), seed=args.seed)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"wrote tiny checkpoint to {folder} ({size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
