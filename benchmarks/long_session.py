"""Long-session benchmark: run N units (default 3,600 = one hour of 1 s units) of the tiny model
with a random image and random audio per unit, and compare per-unit compute time and resident
memory (VmRSS from /proc/self/status) of the first and the last 100 units.

    .venv/bin/python benchmarks/long_session.py [--units 3600] [--checkpoint DIR] [--mode duplex]

Prints the figures and appends them, with date and machine, to benchmarks/results/long_session.md.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import machine  # noqa: E402 - benchmarks/ is the script's folder


def vm_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def summarize(values):
    return statistics.mean(values), statistics.median(values), max(values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=3600)
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: a fresh tiny one)")
    p.add_argument("--mode", default="duplex", choices=["duplex", "turn_based"])
    p.add_argument("--max-context-units", type=int, default=24)
    p.add_argument("--window", type=int, default=100, help="units compared at each end")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "long_session.md"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from omni_ros.flow.types import UnitInput
    from omni_ros.model.checkpoint import write_checkpoint
    from omni_ros.model.loader import load_model
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession
    from omni_ros.runtime.torch_compute import TorchCompute

    tmp = None
    ckpt = args.checkpoint
    if ckpt is None:
        tmp = tempfile.TemporaryDirectory(prefix="long_session_")
        ckpt = write_checkpoint(Path(tmp.name) / "tiny", seed=0)
    model = load_model(ckpt, device="cpu", dtype="float32")
    session = OmniSession(TorchCompute(model), SessionOptions(mode=args.mode, seed=args.seed,
                                                      max_context_units=args.max_context_units))
    session.warmup()
    rng = np.random.default_rng(args.seed)

    compute, rss, cache, speaking = [], [], [], 0
    t_start = time.perf_counter()
    stop = {"now": False}

    def _stop(signum, frame):           # SIGINT/SIGTERM: finish the unit, report what ran
        stop["now"] = True

    import signal
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for i in range(args.units):
        if stop["now"]:
            print(f"stopped after {i} units", flush=True)
            break
        image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        audio = (rng.standard_normal(16000) * rng.uniform(0.0, 0.2)).astype(np.float32)
        unit = UnitInput(window_index=i, epoch=0, start_ns=i * 10**9, end_ns=(i + 1) * 10**9,
                         image=image, image_stamp_ns=i * 10**9, audio=audio)
        t0 = time.perf_counter()
        out = session.run_unit(unit)
        compute.append(time.perf_counter() - t0)
        rss.append(vm_rss_mb())
        cache.append(session.cache_length)
        speaking += 0 if out.is_listen else 1
        if (i + 1) % 300 == 0:
            print(f"  unit {i + 1}/{args.units}: {compute[-1] * 1000:.0f} ms, RSS {rss[-1]:.0f} MB, "
                  f"cache {cache[-1]} tokens", flush=True)
    total = time.perf_counter() - t_start

    done = len(compute)
    w = min(args.window, done // 2)
    first_c, last_c = summarize(compute[:w]), summarize(compute[-w:])
    first_r, last_r = statistics.mean(rss[:w]), statistics.mean(rss[-w:])
    first_k, last_k = statistics.mean(cache[:w]), statistics.mean(cache[-w:])
    lines = [
        f"units: {done}{'' if done == args.units else f' of {args.units} (stopped early)'} "
        f"({args.mode}, max_context_units {args.max_context_units}), "
        f"speaking units {speaking}, wall {total:.0f} s",
        f"compute per unit, first {w}: mean {first_c[0] * 1000:.1f} ms, median {first_c[1] * 1000:.1f} ms, "
        f"max {first_c[2] * 1000:.1f} ms",
        f"compute per unit, last {w}:  mean {last_c[0] * 1000:.1f} ms, median {last_c[1] * 1000:.1f} ms, "
        f"max {last_c[2] * 1000:.1f} ms",
        f"compute ratio last/first: mean {last_c[0] / first_c[0]:.2f}, median {last_c[1] / first_c[1]:.2f}",
        f"VmRSS first {w}: {first_r:.1f} MB, last {w}: {last_r:.1f} MB, ratio {last_r / first_r:.3f}",
        f"KV cache tokens first {w}: {first_k:.0f}, last {w}: {last_k:.0f}, max {max(cache)}",
    ]
    for line in lines:
        print(line)
    res = Path(args.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    new = not res.exists()
    with res.open("a", encoding="utf-8") as f:
        if new:
            f.write("# Long-session benchmark (benchmarks/long_session.py)\n\n"
                    "Tiny random-weight model, random image + audio per 1 s unit; per-unit compute and "
                    "resident memory of the first vs the last units.\n")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        f.write(f"\n## {stamp}\n\nmachine: {machine()}\n\n")
        f.write("".join(f"- {line}\n" for line in lines))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
