"""Console script `omni_ros_tiny_checkpoint OUT_DIR [--seed N] [--size tiny|released] [--plan]`:
write a random-weight checkpoint folder in the released MiniCPM-o 4.5 layout, for tests, demos and
measurements without the real weights. `--size tiny` (the default) is small and quick; `--size
released` has the released dimensions (about 9.4 B parameters, 18.8 GB of bf16 shards plus 1 GB of
waveform-stage assets), written shard by shard with little memory.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

# room kept free beyond the shards (tokenizer, assets/token2wav at released size, file system)
ROOM_BEYOND_SHARDS = 2 * 10 ** 9


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="omni_ros_tiny_checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--size", choices=("tiny", "released"), default="tiny",
                        help="model dimensions: tiny (default) or the released ones")
    parser.add_argument("--plan", action="store_true",
                        help="print the shard plan (files, tensors, bytes) and write nothing")
    args = parser.parse_args(argv)

    from omni_ros.model.checkpoint import SHARD_BYTES, plan_checkpoint, size_config, write_checkpoint

    out = Path(args.out_dir)
    plan = plan_checkpoint(size_config(args.size), max_shard_bytes=SHARD_BYTES[args.size])
    if args.plan:
        for shard in plan.shards:
            print(f"{shard.file}: {len(shard.tensors)} tensors, {shard.file_bytes} bytes "
                  f"({shard.tensors[0].name} .. {shard.tensors[-1].name})")
        print(f"total: {plan.total_size} bytes of weights in {len(plan.shards)} shards")
        return 0
    free = shutil.disk_usage(_existing_parent(out)).free
    if args.size == "released" and free < plan.total_size + ROOM_BEYOND_SHARDS:
        print(f"omni_ros_tiny_checkpoint: {out} has {free / 1e9:.1f} GB free; a released-size checkpoint "
              f"needs about {(plan.total_size + ROOM_BEYOND_SHARDS) / 1e9:.1f} GB", file=sys.stderr)
        return 1

    t0 = time.monotonic()
    folder = write_checkpoint(out, seed=args.seed, size=args.size)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"wrote {args.size} checkpoint to {folder} ({size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
