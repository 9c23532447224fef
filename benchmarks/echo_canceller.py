"""The echo canceller alone on the simulated rooms: its CPU per second of mic audio and how much
of the robot's echo it removes, as it converges and once it has.

    .venv/bin/python benchmarks/echo_canceller.py --grid ci
    .venv/bin/python benchmarks/echo_canceller.py --only base,speaker_5cm --variant b512:block=512

The canceller is two thirds of the barge-in detector's CPU (benchmarks/results/barge_in_rooms.md),
and everything the detector decides rests on what it leaves. This script feeds each condition's
mic (the robot's echo through the room and the room's noise, no person) and the reference, aligned
as omni_node aligns them (`echo_delay_ms` from the condition, the canceller's `lead` ahead), in
20 ms chunks to flow/echo.FdafEchoCanceller, once per variant (`--variant NAME:key=value,...`,
its keyword arguments: block, step, tail_ms, lead_ms, proportionate, regularization), the variants taking turns
over `--repeats` passes so that a busy machine slows them alike; the CPU figure is the least of
the passes.

ERLE per stretch: the mic's energy over the canceller's output's, in dB, from the start (0-1 s,
1-2 s, 2-4 s: how fast it learns the path) and over the rest (what it leaves once converged);
"noise bound" is the mic's energy over the noise's alone, the most any canceller can show there.
`--room-change S`: the first S seconds play through another room's loudspeaker path (of the base
condition's kind) and the condition's own takes over after them; the stretches are then counted
from the change (how fast it re-learns a path that changed under it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# barge_in_offline sets the paths up and makes omni_ros this tree's (common.prefer_this_tree)
from barge_in_offline import (MIC_CHUNK, NS, ROOT, T0, parse_variant,  # noqa: E402
                              robot_voice, select_grid)
import acoustics as A  # noqa: E402
from acoustics import RATE, Condition  # noqa: E402

STRETCHES = ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0))


def signals(c: Condition, voice: np.ndarray, seconds: float, room_change: float):
    """(mic, the reference buffer, noise at the mic) for `seconds` of the robot speaking in `c`'s
    room, in its own chunks; the reference is laid in omni_node's own ReferenceBuffer, as the
    detector's push_reference lays it, stamped T0 on (a positive stamp) for the mic's sample 0."""
    from omni_ros.flow.echo import ReferenceBuffer
    scene = A.Scene(c, A.active_rms(voice))
    n = int(seconds * RATE)
    chunk = RATE * c.chunk_ms // 1000
    reference = ReferenceBuffer(seconds=seconds + 1.0)
    own_path = scene.echo.rir
    if room_change:
        b = Condition()
        scene.echo.rir = A.Room(b.rt60, b.speaker_cm, b.person_m, seed=c.seed() + 1).speaker
    change = int(room_change * RATE)
    for first in range(0, n, chunk):
        if room_change and first >= change:
            scene.echo.rir = own_path
        samples = voice[(first + np.arange(chunk)) % voice.shape[0]]
        reference.add((T0 + first) * NS // RATE, samples)
        scene.echo.add(first, samples)
    noise = scene.noise_at(0, n).astype(np.float32)
    mic = np.clip(scene.echo.get(0, n) + noise, -1.0, 1.0).astype(np.float32)
    return mic, reference, noise


def run_variant(kwargs: Dict, mic: np.ndarray, reference,
                echo_delay_ms: float) -> Tuple[np.ndarray, float]:
    """The canceller's output and its CPU seconds, the mic fed in 20 ms chunks as omni_node's
    detector feeds it (whole blocks, the remainder carried to the next chunk; the reference read
    back from `echo_delay_ms` before, `lead` ahead, as the detector reads it)."""
    from omni_ros.flow.echo import FdafEchoCanceller
    canceller = FdafEchoCanceller(**{k: int(v) if k == "block" else v for k, v in kwargs.items()})
    delay = int(round(echo_delay_ms * RATE / 1000))
    out, done, cpu = [], 0, 0.0
    for end in range(MIC_CHUNK, mic.shape[0] + 1, MIC_CHUNK):
        whole = (end - done) - (end - done) % canceller.block
        if not whole:
            continue
        far = reference.get(T0 + done - delay + canceller.lead, whole)
        started = time.thread_time()
        out.append(canceller.process(mic[done:done + whole], far))
        cpu += time.thread_time() - started
        done += whole
    return np.concatenate(out), cpu


def erle(mic: np.ndarray, out: np.ndarray, a: float, b: float) -> float:
    s, e = int(a * RATE), int(b * RATE)
    return float(10 * np.log10(np.sum(np.square(mic[s:e], dtype=np.float64))
                               / max(np.sum(np.square(out[s:e], dtype=np.float64)), 1e-20)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", choices=("ci", "reduced", "full", "targets"), default="ci")
    ap.add_argument("--only", default="", help="comma-separated condition names")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--room-change", type=float, default=0.0, metavar="S",
                    help="seconds through another room's loudspeaker path first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "tiny"))
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=value,... (FdafEchoCanceller keyword arguments); repeatable")
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/results")
    args = ap.parse_args()
    grid = select_grid(args.grid, args.only)
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    voices: Dict[str, np.ndarray] = {}
    rows: List[str] = []
    totals: Dict[str, List[float]] = {name: [0.0, 0.0] for name, _ in variants}
    started = time.perf_counter()
    for c in grid:
        if c.robot_voice not in voices:
            voices[c.robot_voice] = robot_voice(c.robot_voice, Path(args.checkpoint))
        seconds = args.seconds + args.room_change
        mic, reference, noise = signals(c, voices[c.robot_voice], seconds, args.room_change)
        cpu: Dict[str, List[float]] = {name: [] for name, _ in variants}
        outs: Dict[str, np.ndarray] = {}
        for k in range(args.repeats):
            turn = variants[k % len(variants):] + variants[:k % len(variants)]
            for name, kwargs in turn:
                outs[name], seconds_cpu = run_variant(kwargs, mic, reference, c.echo_delay_ms)
                cpu[name].append(seconds_cpu)
        t0 = args.room_change
        bound = erle(mic, noise, t0 + 4.0, seconds)
        for name, _ in variants:
            share = min(cpu[name]) / (mic.shape[0] / RATE)
            totals[name][0] += min(cpu[name])
            totals[name][1] += mic.shape[0] / RATE
            early = " / ".join(f"{erle(mic, outs[name], t0 + a, t0 + b):.1f}" for a, b in STRETCHES)
            rows.append(f"| {c.name} | {name} | {100 * share:.3f} % | {early} | "
                        f"{erle(mic, outs[name], t0 + 4.0, seconds):.1f} | {bound:.1f} |")
        print(rows[-1], flush=True)
    text = ("| condition | variant | CPU (share of real time) | ERLE 0-1 / 1-2 / 2-4 s (dB) "
            "| ERLE after 4 s (dB) | noise bound (dB) |\n| --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(rows) + "\n\n"
            + "\n".join(f"{name}: CPU {100 * cpu_s / max(audio_s, 1e-9):.3f} % of real time over "
                        f"{audio_s:.0f} s of mic audio" for name, (cpu_s, audio_s) in totals.items()))
    print("\n" + text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.write:
        from common import append_result
        append_result("echo_canceller", f"The echo canceller alone, {args.grid} grid",
                      f"Command: `benchmarks/echo_canceller.py {' '.join(sys.argv[1:])}`\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
