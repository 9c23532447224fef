"""Barge-in detector in process on the simulated rooms: quick figures for tuning the detector.

    .venv/bin/python benchmarks/barge_in_offline.py --grid reduced --trials 8
    .venv/bin/python benchmarks/barge_in_offline.py --grid full --variant gate0:residual_gate_db=0
    .venv/bin/python benchmarks/barge_in_offline.py --grid full --starts 10

benchmarks/barge_in_rooms.py, over DDS with omni_node, is the measure of record. This script feeds
the same detector (omni_ros.flow.bargein.BargeInDetector with silero-vad and the echo canceller
omni_node would pick) the same room signals (benchmarks/acoustics.py) in process, without the
node, clock or executor, so a condition takes seconds, and detector variants (`--variant
NAME:key=value,...`, keyword arguments of BargeInDetector) are compared on identical signals in
one run. Two variant keys are the benchmark's own: `mic_echo=0` (a mic without the robot's echo)
and `room_change=1` (the warm-up's loudspeaker-to-mic path is another room's, of the base
condition's kind, and the condition's own takes over after it, under the canceller that learnt
the first: the robot moved while speaking, as each condition's start over DDS does to omni_node).

The timeline of a trial, on the 16 kHz grid: the robot publishes its speech in `chunk_ms` chunks
(the reference, and `latency_ms` later its echo at the mic); 1.0-1.6 s into its speech the person
starts a phrase; the mic (echo + noise + person) goes to the detector in 20 ms chunks. The robot
talks on through the phrase (double talk: the hardest case for the detector), then is silent for
0.6 s after the phrase and speaks again (the restart after a barge-in). After the trials, echo
only for `--echo-seconds`.

Figures per condition: interruptions detected (a barge-in whose onset lies between 100 ms before
the person's onset and 300 ms after the phrase), the hold latency (the person's onset to the end
of the first 32 ms frame of the run that became the barge-in: from then on omni_node holds its
next speech chunk), the stop latency that implies (the onset to the start of the last chunk
published, chunk boundaries at a seeded phase: what barge_in_rooms.py measures over DDS), false
barge-ins per 10 minutes of echo-only speech (before each trial, in the restarts and the echo
block), and the detector's CPU per second of speech.

`--starts K` measures the start instead: K times per condition a detector just made (omni_node
started) hears the robot's first 3 s of speech, each time from a point START_STEP_S further into
its voice, with no person in the room: the starts with a false barge-in, and when it armed.

The robot's voice: "model" is the tiny checkpoint's speech (its session forced to speak, cached
under checkpoints/), "speech" is espeak-ng speech (acoustics.RobotSpeech).
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(BENCH), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)
from common import prefer_this_tree  # noqa: E402
import acoustics as A  # noqa: E402
from acoustics import RATE, Condition  # noqa: E402

NS = 1_000_000_000
MIC_CHUNK = RATE * 20 // 1000
FRAME = 512
T0 = 100 * RATE                       # grid index of the timeline's start (a positive stamp)
MODEL_SPEECH_SECONDS = 60
TARGET_CPU = 0.03


# -- the robot's voice ---------------------------------------------------------------------------
def model_speech(checkpoint: Path, seconds: int = MODEL_SPEECH_SECONDS) -> np.ndarray:
    """`seconds` of the tiny checkpoint's speech at 16 kHz (its session forced to speak), cached
    beside the checkpoint."""
    cache = checkpoint.parent / f"{checkpoint.name}_speech_{seconds}s.npy"
    if cache.exists():
        return np.load(cache)
    import soxr

    from omni_ros.flow.types import OUTPUT_SAMPLE_RATE, UnitInput
    from omni_ros.runtime.registry import BackendSettings, create_session
    session = create_session("torch", BackendSettings(
        model_path=str(checkpoint), device="cpu", dtype="float32",
        session_options={"force_listen_count": 0, "seed": 3}))
    rng = np.random.default_rng(3)
    parts = []
    for k in range(seconds):
        session.decision_override = True
        out = session.run_unit(UnitInput(
            window_index=k, epoch=0, start_ns=k * NS, end_ns=(k + 1) * NS,
            image=(rng.random((224, 224, 3)) * 255).astype(np.uint8), image_stamp_ns=k * NS,
            audio=(0.01 * rng.standard_normal(RATE)).astype(np.float32)))
        parts.append(out.speech if out.speech.shape[0] else np.zeros(OUTPUT_SAMPLE_RATE, np.float32))
    audio = soxr.resample(np.concatenate(parts), OUTPUT_SAMPLE_RATE, RATE).astype(np.float32)
    np.save(cache, audio)
    return audio


def robot_voice(kind: str, checkpoint: Optional[Path]) -> np.ndarray:
    if kind == "speech":
        import soxr
        return soxr.resample(A.RobotSpeech().audio, 24000, RATE).astype(np.float32)
    if checkpoint is None:
        raise ValueError("the model's voice needs --checkpoint (a tiny checkpoint folder)")
    return model_speech(checkpoint)


# -- one condition -------------------------------------------------------------------------------
@dataclass
class Outcome:
    name: str
    variant: str
    detected: int = 0
    trials: int = 0
    holds: List[float] = field(default_factory=list)     # s, onset -> hold
    stops: List[float] = field(default_factory=list)     # s, onset -> last chunk's start
    false: int = 0
    echo_s: float = 0.0
    cpu_s: float = 0.0
    speech_s: float = 0.0
    erle_db: float = 0.0                                 # the canceller's, at the end
    missed: List[int] = field(default_factory=list)      # the trials the robot talked through

    def stop_stats(self) -> Tuple[float, float, float]:
        if not self.stops:
            return (float("nan"),) * 3
        s = np.asarray(self.stops)
        return float(np.median(s)), float(np.percentile(s, 95)), float(s.max())

    def meets(self, chunk_s: float) -> bool:
        _, p95, worst = self.stop_stats()
        return (self.trials > 0 and self.detected >= 0.9 * self.trials
                and p95 <= chunk_s + 0.05 and worst <= chunk_s + 0.1
                and self.false_per_10min() <= 1.0 and self.cpu_s / max(self.speech_s, 1e-9) < TARGET_CPU)

    def false_per_10min(self) -> float:
        return self.false * 600.0 / max(self.echo_s, 1e-9)


class Timeline:
    """The robot's speech, the room and the detector on one 16 kHz grid."""

    def __init__(self, scene: A.Scene, voice: np.ndarray, detector, chunk: int, phase: int,
                 mic_echo: float = 1.0) -> None:
        self.scene, self.voice, self.detector, self.chunk = scene, voice, detector, chunk
        self.mic_echo = float(mic_echo)
        self.now = T0                      # grid index: the mic has been delivered up to here
        self.next_chunk = T0 + phase       # grid index of the next chunk boundary
        self.voice_at = 0
        self.speaking = True
        self.person: Optional[Tuple[int, np.ndarray]] = None
        self.published: List[int] = []     # chunk starts (grid index) published
        self.events: List[Tuple[int, int]] = []  # (detected at grid index, onset grid index)
        self.hold_began: Dict[int, int] = {}     # onset grid index -> grid index of the hold
        self.speech_samples = 0

    def run_until(self, end: int) -> None:
        det = self.detector
        while self.now < end:
            # A chunk that starts during the next mic chunk is published (and played) before
            # that mic chunk is captured, as over DDS: the reference and the loudspeaker both
            # have it from its first sample.
            while self.next_chunk < self.now + MIC_CHUNK:
                if self.speaking:
                    n = self.chunk
                    idx = (self.voice_at + np.arange(n)) % self.voice.shape[0]
                    self.voice_at = int((self.voice_at + n) % self.voice.shape[0])
                    samples = self.voice[idx]
                    det.push_reference(self.next_chunk * NS // RATE, samples)
                    self.scene.echo.add(self.next_chunk, samples)
                    self.published.append(self.next_chunk)
                    self.speech_samples += n
                self.next_chunk += self.chunk
            first, n = self.now, MIC_CHUNK
            audio = self.mic_echo * self.scene.echo.get(first, n) + self.scene.noise_at(first, n)
            if self.person is not None:
                p_first, p = self.person
                off = first - p_first
                lo, hi = max(0, off), min(p.shape[0], off + n)
                if hi > lo:
                    audio[lo - off:hi - off] += p[lo:hi]
            run_before = det._run
            onset = det.push_mic(first * NS // RATE, np.clip(audio, -1.0, 1.0))
            self.now += n
            if det._run > 0 and (run_before == 0 or det._onset is not None):
                key = int(det._onset) if det._onset is not None else None
                if key is not None and key not in self.hold_began:
                    self.hold_began.clear() if len(self.hold_began) > 64 else None
                    self.hold_began[key] = self.now
            if onset is not None:
                o = onset * RATE // NS
                self.events.append((self.now, o))


class TenVoiceActivity:
    """TEN VAD (`ten-vad`, 16 ms hops) scoring a 32 ms frame: the higher of its two hops. For the
    comparison with silero only; it needs libc++ (apt libc++1)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        from ten_vad import TenVad
        self._vad = TenVad(256)

    def __call__(self, frame: np.ndarray) -> float:
        from omni_ros.flow.audio import float_to_s16le
        pcm = np.frombuffer(float_to_s16le(frame), dtype="<i2").astype(np.int16)
        return max(self._vad.process(np.ascontiguousarray(pcm[i:i + 256]))[0] for i in (0, 256))


def run_start(c: Condition, voice: np.ndarray, voice_at: int, seconds: float = 3.0,
              phase: int = 0, kwargs: Optional[Dict] = None) -> Tuple[List[int], Optional[float]]:
    """A fresh detector (omni_node just started) while the robot says its first words, from
    `voice_at` in its voice, with no person in the room: the onsets it triggers on (grid
    indices) and how long after the robot's first word barge-in was armed (None: not within
    `seconds`)."""
    from omni_ros.flow.bargein import BargeInDetector
    from omni_ros.flow.echo import make_echo_canceller
    from omni_ros.flow.vad import VoiceActivity

    detector = BargeInDetector(VoiceActivity(), make_echo_canceller("auto"),
                               echo_delay_ms=c.echo_delay_ms, **(kwargs or {}))
    line = Timeline(A.Scene(c, A.active_rms(voice)), voice, detector,
                    RATE * c.chunk_ms // 1000, phase=phase)
    line.voice_at = int(voice_at) % voice.shape[0]
    armed_at = None
    while line.now < T0 + int(seconds * RATE):
        line.run_until(line.now + MIC_CHUNK)
        if armed_at is None and detector.armed:
            armed_at = (line.now - T0) / RATE
    return [o for _, o in line.events], armed_at


def run_condition(c: Condition, variant: str, kwargs: Dict, voice: np.ndarray, trials: int,
                  echo_seconds: float, warmup: float = 4.0) -> Outcome:
    from omni_ros.flow.bargein import BargeInDetector
    from omni_ros.flow.echo import make_echo_canceller
    from omni_ros.flow.vad import VoiceActivity

    scene = A.Scene(c, A.active_rms(voice))
    options = dict(kwargs)
    canceller = make_echo_canceller(options.pop("echo_canceller", "auto"))
    fdaf = {k[5:]: v for k, v in options.items() if k.startswith("fdaf_")}   # fdaf_block=256 ...
    if fdaf:
        from omni_ros.flow.echo import FdafEchoCanceller
        canceller = FdafEchoCanceller(**{k: int(v) if k == "block" else v for k, v in fdaf.items()})
        options = {k: v for k, v in options.items() if not k.startswith("fdaf_")}
    # mic_echo=0 with echo_canceller=none: a mic without the robot's echo, the bound a perfect
    # canceller would give (what the VAD makes of the person in that room and noise).
    mic_echo = float(options.pop("mic_echo", 1.0))
    # room_change=1: the warm-up's loudspeaker-to-mic path is another room's, of the base
    # condition's kind; the condition's own path takes over after it, under the canceller that
    # learnt the first (the robot moved, or turned towards a wall: what the DDS grid does to
    # omni_node at every condition's start).
    own_path = scene.echo.rir
    if options.pop("room_change", 0.0):
        b = Condition()
        scene.echo.rir = A.Room(b.rt60, b.speaker_cm, b.person_m, seed=c.seed() + 1).speaker
    vad = TenVoiceActivity() if options.pop("vad", "silero") == "ten" else VoiceActivity()
    detector = BargeInDetector(vad, canceller, echo_delay_ms=c.echo_delay_ms, **options)
    rng = np.random.default_rng(c.seed())
    chunk = RATE * c.chunk_ms // 1000
    line = Timeline(scene, voice, detector, chunk, phase=int(rng.integers(0, chunk)), mic_echo=mic_echo)
    out = Outcome(c.name, variant, trials=trials)
    line.run_until(T0 + int(warmup * RATE))       # the canceller learns the echo path
    scene.echo.rir = own_path
    echo_spans: List[Tuple[int, int]] = []
    for k in range(trials):
        line.speaking = True
        a, seen = line.now, len(line.events)
        line.run_until(line.now + int(rng.uniform(1.0, 1.6) * RATE))
        wet, onset, _, _ = scene.person(k)
        start = line.now + int(rng.integers(0, MIC_CHUNK))
        line.person = (start, wet)
        onset_at, end_at = start + onset, start + wet.shape[0]
        line.run_until(end_at + int(0.3 * RATE))
        hits = [(at, o) for at, o in line.events[seen:] if onset_at - RATE // 10 <= o <= end_at + int(0.3 * RATE)]
        # echo only before the person: from the trial's start to 100 ms before the onset
        out.false += sum(1 for at, o in line.events[seen:] if o < onset_at - RATE // 10)
        echo_spans.append((a, onset_at - RATE // 10))
        if hits:
            out.detected += 1
            _, o = hits[0]
            hold = line.hold_began.get(o, hits[0][0])
            out.holds.append((hold - onset_at) / RATE)
            before = [p for p in line.published if p < hold]
            last = before[-1] if before else onset_at
            out.stops.append(max(0.0, (last - onset_at) / RATE))
        else:
            out.missed.append(k)
        # The robot stops at the end of the phrase (or at its barge-in), silent 0.6 s, and
        # speaks again while the phrase's reverberation dies away: echo only from then on.
        line.speaking = False
        line.run_until(max(line.now, end_at) + int(0.6 * RATE))
        line.person = None
        line.speaking = True
        a, seen = line.now, len(line.events)
        line.run_until(a + int(2.5 * RATE))
        out.false += len(line.events) - seen
        echo_spans.append((a, line.now))
    a, seen = line.now, len(line.events)
    line.run_until(a + int(echo_seconds * RATE))
    out.false += len(line.events) - seen
    echo_spans.append((a, line.now))
    out.echo_s = sum(b - a for a, b in echo_spans) / RATE
    out.cpu_s = detector.counters.cpu_us / 1e6
    out.speech_s = line.speech_samples / RATE
    out.erle_db = float(detector._erle_db)
    return out


def _worker_voice(voice_kind: str, checkpoint: Path) -> np.ndarray:
    """A pool worker's set-up: this tree's detector (main() does the same), one torch thread,
    the robot's voice."""
    prefer_this_tree()
    import torch
    torch.set_num_threads(1)
    return robot_voice(voice_kind, checkpoint)


def _job(args):
    c, variant, kwargs, voice_kind, checkpoint, trials, echo_seconds, warmup = args
    voice = _worker_voice(voice_kind, checkpoint)
    started = time.perf_counter()
    out = run_condition(c, variant, kwargs, voice, trials, echo_seconds, warmup)
    return out, time.perf_counter() - started


START_STEP_S = 2.3     # the robot's first word of each start: this far into its voice from the last


def run_starts(c: Condition, voice: np.ndarray, starts: int,
               kwargs: Optional[Dict] = None) -> List[Tuple[List[int], Optional[float]]]:
    """`starts` runs of run_start, each from START_STEP_S further into the voice and at another
    chunk phase."""
    chunk = RATE * c.chunk_ms // 1000
    return [run_start(c, voice, int(k * START_STEP_S * RATE), phase=k * 97 % chunk, kwargs=kwargs)
            for k in range(starts)]


def _starts_job(args):
    c, variant, kwargs, voice_kind, checkpoint, starts = args
    return c.name, variant, run_starts(c, _worker_voice(voice_kind, checkpoint), starts, kwargs)


def starts_table(results) -> str:
    """condition | variant | starts with a false barge-in | armed after (median / max)."""
    rows = ["| condition | variant | starts with a false barge-in | armed after median / max (s) |",
            "| --- | --- | --- | --- |"]
    totals: Dict[str, List[int]] = {}
    for name, variant, runs in results:
        armed = [a for _, a in runs if a is not None]
        bad = sum(1 for onsets, _ in runs if onsets)
        t = totals.setdefault(variant, [0, 0, 0])
        t[0] += bad
        t[1] += len(runs)
        t[2] += len(runs) - len(armed)
        when = f"{np.median(armed):.2f} / {max(armed):.2f}" if armed else "-"
        rows.append(f"| {name} | {variant} | {bad}/{len(runs)} | {when}"
                    f"{f' ({len(runs) - len(armed)} never)' if len(armed) < len(runs) else ''} |")
    lines = [f"{v}: {b} of {n} starts with a false barge-in, {never} not armed within 3 s"
             for v, (b, n, never) in totals.items()]
    return "\n".join(rows) + "\n\n" + "\n".join(lines)


def parse_variant(text: str) -> Tuple[str, Dict]:
    """'name:key=value,key=value' -> (name, {key: number or text})."""
    name, _, body = text.partition(":")
    kwargs: Dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = float(value)
        except ValueError:
            kwargs[key] = value
    return name, kwargs


def select_grid(name: str, only: str = "") -> List[Condition]:
    """barge_in_rooms' grid by name (ci, reduced, full, targets), cut to `only` (comma-separated
    condition names) when given."""
    import barge_in_rooms as rooms
    grid = {"ci": lambda: rooms.CI_GRID, "reduced": rooms.reduced_grid, "full": rooms.full_grid,
            "targets": rooms.target_grid}[name]()
    if only:
        names = set(only.split(","))
        grid = [c for c in grid if c.name in names]
    return grid


def table(outcomes: Sequence[Outcome], conditions: Dict[str, Condition]) -> str:
    rows = ["| condition | variant | detected | hold median / max (s) | stop median / p95 / max (s) "
            "| false per 10 min (echo s) | CPU per s of speech | meets |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        med, p95, worst = o.stop_stats()
        holds = (f"{np.median(o.holds):.3f} / {max(o.holds):.3f}" if o.holds else "n/a")
        rows.append(f"| {o.name} | {o.variant} | {o.detected}/{o.trials} | {holds} | "
                    f"{med:.3f} / {p95:.3f} / {worst:.3f} | {o.false} = {o.false_per_10min():.1f} "
                    f"({o.echo_s:.0f} s) | {100 * o.cpu_s / max(o.speech_s, 1e-9):.2f} % | "
                    f"{'yes' if o.meets(conditions[o.name].chunk_ms / 1000) else '**no**'} |")
    return "\n".join(rows)


def summary(outcomes: Sequence[Outcome]) -> str:
    lines = []
    for v in dict.fromkeys(o.variant for o in outcomes):
        mine = [o for o in outcomes if o.variant == v]
        det = sum(o.detected for o in mine)
        n = sum(o.trials for o in mine)
        stops = np.concatenate([o.stops for o in mine]) if any(o.stops for o in mine) else np.zeros(1)
        false = sum(o.false for o in mine)
        echo = sum(o.echo_s for o in mine)
        lines.append(f"{v}: detected {det}/{n} ({100 * det / max(n, 1):.1f} %), worst condition "
                     f"{min(o.detected / max(o.trials, 1) for o in mine) * 100:.0f} %, stop p95 "
                     f"{np.percentile(stops, 95):.3f} s max {stops.max():.3f} s, false {false} in "
                     f"{echo:.0f} s ({false * 600 / max(echo, 1e-9):.1f} per 10 min), "
                     f"CPU {100 * sum(o.cpu_s for o in mine) / max(sum(o.speech_s for o in mine), 1e-9):.2f} %")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", choices=("ci", "reduced", "full", "targets"), default="reduced")
    ap.add_argument("--only", default="", help="comma-separated condition names")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--echo-seconds", type=float, default=30.0)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "tiny"))
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=value,... (BargeInDetector keyword arguments); repeatable")
    ap.add_argument("--warmup", type=float, default=4.0,
                    help="seconds the robot speaks alone before the first trial")
    ap.add_argument("--starts", type=int, default=0,
                    help="instead of trials: this many fresh starts per condition (a detector "
                         "just made, the robot's first 3 s of speech from another point of its "
                         "voice each time, no person): false barge-ins and when barge-in arms")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/results")
    args = ap.parse_args()
    prefer_this_tree()     # not at import: test/test_barge_in_in_process.py imports this module
    grid = select_grid(args.grid, args.only)
    variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    checkpoint = Path(args.checkpoint)
    if any(c.robot_voice == "model" for c in grid):
        if not (checkpoint / "config.json").exists():
            from omni_ros.model.checkpoint import write_checkpoint
            write_checkpoint(checkpoint)
        model_speech(checkpoint)
    started = time.perf_counter()
    if args.starts:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_starts_job, [(c, name, kw, c.robot_voice, checkpoint, args.starts)
                                             for c in grid for name, kw in variants])
        text = starts_table(results)
        print(text)
        print(f"({time.perf_counter() - started:.0f} s)")
        if args.write:
            from common import append_result
            append_result("barge_in_offline", f"Barge-in in process, the robot's first words after "
                          f"a start, {args.grid} grid, {args.starts} starts per condition",
                          f"Command: `benchmarks/barge_in_offline.py {' '.join(sys.argv[1:])}`"
                          f"\n\n{text}")
        return 0
    jobs = [(c, name, kw, c.robot_voice, checkpoint, args.trials, args.echo_seconds, args.warmup)
            for c in grid for name, kw in variants]
    outcomes = []
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for out, seconds in pool.imap(_job, jobs):
            outcomes.append(out)
            print(f"{out.name} [{out.variant}]: {out.detected}/{out.trials}, stops "
                  f"{[round(s, 3) for s in out.stops]}, missed {out.missed}, false {out.false}, "
                  f"ERLE {out.erle_db:.1f} dB "
                  f"({seconds:.0f} s)",
                  flush=True)
    conditions = {c.name: c for c in grid}
    text = table(outcomes, conditions) + "\n\n" + summary(outcomes)
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.write:
        from common import append_result
        append_result("barge_in_offline", f"Barge-in in process, {args.grid} grid, {args.trials} "
                      f"trials per condition", f"Command: `benchmarks/barge_in_offline.py "
                      f"{' '.join(sys.argv[1:])}`\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
