"""omni_ros_recorder: collect what omni_node publishes and print a summary of the run.

Windows processed, listen/speak per window, seconds of speech out, text, alerts, and compute time
per window against the window length. `--output DIR` also writes summary.json and speech.wav.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rclpy
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from rclpy.node import Node

from omni_ros.msg import DuplexState, OmniText, ProactiveAlert
from omni_ros.ros import qos
from omni_ros.ros.runner import split_ros_args
from omni_ros.ros.conversions import stamp_to_ns

STATE_LETTERS = {DuplexState.LISTENING: "L", DuplexState.SPEAKING: "S",
                 DuplexState.INTERRUPTED: "I"}
ALERT_LEVELS = {ProactiveAlert.INFO: "INFO", ProactiveAlert.WARN: "WARN",
                ProactiveAlert.ERROR: "ERROR"}
MAX_WINDOWS = 100_000          # a recorder left running for a day stays bounded
MAX_SPEECH_SECONDS = 600


class Recorder(Node):
    def __init__(self, keep_speech: bool) -> None:
        super().__init__("omni_recorder")
        self.states: list = []
        self.texts: list = []
        self.alerts: list = []
        self.speech_chunks = 0
        self.speech_bytes = 0
        self.speech_info: Optional[AudioInfo] = None
        self.keep_speech = keep_speech
        self.speech = bytearray()
        self.ready_at: Optional[float] = None
        self.create_subscription(DuplexState, "omni/state", self.on_state, qos.OUTPUT)
        self.create_subscription(OmniText, "omni/text", self.on_text, qos.OUTPUT)
        self.create_subscription(ProactiveAlert, "omni/alerts", self.on_alert, qos.OUTPUT)
        self.create_subscription(AudioDataStamped, "speech/audio_stamped", self.on_speech,
                                 qos.SPEECH)
        self.create_subscription(AudioInfo, "speech/audio_info", self.on_speech_info,
                                 qos.AUDIO_INFO)

    def on_state(self, message: DuplexState) -> None:
        if len(self.states) < MAX_WINDOWS:
            self.states.append(message)

    def on_text(self, message: OmniText) -> None:
        if len(self.texts) < MAX_WINDOWS:
            self.texts.append(message)

    def on_alert(self, message: ProactiveAlert) -> None:
        if len(self.alerts) < MAX_WINDOWS:
            self.alerts.append(message)

    def on_speech(self, message: AudioDataStamped) -> None:
        data = bytes(message.audio.data)
        self.speech_chunks += 1
        self.speech_bytes += len(data)
        if self.keep_speech and len(self.speech) < MAX_SPEECH_SECONDS * 48000:
            self.speech.extend(data)

    def on_speech_info(self, message: AudioInfo) -> None:
        self.speech_info = message
        if self.ready_at is None:
            self.ready_at = time.monotonic()

    def summary(self) -> dict:
        rate = self.speech_info.sample_rate if self.speech_info else 24000
        compute = np.array([s.compute_ms for s in self.states], dtype=np.float64)
        windows = [int(s.window_index) for s in self.states]
        gaps = sum(max(0, b - a - 1) for a, b in zip(windows, windows[1:]))
        turns = sum(1 for a, b in zip([None, *self.states], self.states)
                    if b.state == DuplexState.SPEAKING
                    and (a is None or a.state != DuplexState.SPEAKING or a.end_of_turn))
        return {
            "windows_processed": len(self.states),
            "windows_missing_between": gaps,
            "states": "".join(STATE_LETTERS.get(s.state, "?") for s in self.states),
            "speaking_windows": sum(1 for s in self.states if s.state == DuplexState.SPEAKING),
            "turns": turns,
            "proactive_windows": sum(1 for s in self.states if s.proactive),
            "speech_chunks": self.speech_chunks,
            "speech_seconds": self.speech_bytes / 2 / rate,
            "speech_format": (f"{self.speech_info.sample_format} {self.speech_info.channels} ch "
                              f"{self.speech_info.sample_rate} Hz {self.speech_info.coding_format}"
                              if self.speech_info else None),
            "text": " | ".join(t.text for t in self.texts if t.text)[:2000],
            "alerts": [{"window_index": int(a.window_index), "level": ALERT_LEVELS.get(a.level),
                        "text": a.text, "instruction": a.instruction,
                        "confidence": round(float(a.confidence), 3),
                        "evidence_stamp_ns": stamp_to_ns(a.evidence_stamp)} for a in self.alerts],
            "compute_ms_mean": float(compute.mean()) if compute.size else None,
            "compute_ms_median": float(np.median(compute)) if compute.size else None,
            "compute_ms_max": float(compute.max()) if compute.size else None,
        }


def format_summary(summary: dict, window_sec: float) -> str:
    window_ms = window_sec * 1000.0
    lines = ["omni_ros run summary",
             f"  windows processed     {summary['windows_processed']} "
             f"(window {window_sec:.3f} s, {summary['windows_missing_between']} missing in between)",
             f"  listen/speak          {summary['states'] or '-'}   (L listen, S speak, I interrupted)",
             f"  speaking windows      {summary['speaking_windows']} in {summary['turns']} turns, "
             f"{summary['proactive_windows']} proactive",
             f"  speech out            {summary['speech_seconds']:.2f} s in "
             f"{summary['speech_chunks']} chunks ({summary['speech_format']})",
             f"  text                  {summary['text'][:160]!r}",
             f"  alerts                {len(summary['alerts'])}"]
    for alert in summary["alerts"][:5]:
        lines.append(f"    [{alert['level']}] window {alert['window_index']} "
                     f"confidence {alert['confidence']:.2f}: {alert['text'][:80]!r} "
                     f"(instruction: {alert['instruction'][:60]!r})")
    if summary["compute_ms_mean"] is not None:
        lines.append(f"  compute per window    mean {summary['compute_ms_mean']:.1f} ms, median "
                     f"{summary['compute_ms_median']:.1f} ms, max {summary['compute_ms_max']:.1f} ms "
                     f"against a {window_ms:.0f} ms window (real-time factor "
                     f"{summary['compute_ms_mean'] / window_ms:.3f})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omni_ros_recorder", description=__doc__.splitlines()[0])
    parser.add_argument("--duration-sec", type=float, default=22.0,
                        help="record this long after omni_node is up (speech/audio_info seen)")
    parser.add_argument("--wait-sec", type=float, default=120.0,
                        help="give up if omni_node is not up within this time")
    parser.add_argument("--window-sec", type=float, default=1.0)
    parser.add_argument("--output", default=None, help="folder for summary.json and speech.wav")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    own_args, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    options = parse_args(own_args)
    rclpy.init(args=[sys.argv[0], *ros_args])
    recorder = Recorder(keep_speech=options.output is not None)
    started = time.monotonic()
    try:
        while rclpy.ok():
            rclpy.spin_once(recorder, timeout_sec=0.05)
            now = time.monotonic()
            if recorder.ready_at is None and now - started > options.wait_sec:
                print("[omni_ros_recorder] omni_node did not come up (no speech/audio_info)",
                      file=sys.stderr)
                return 1
            if recorder.ready_at is not None and now - recorder.ready_at >= options.duration_sec:
                break
    except KeyboardInterrupt:
        pass
    summary = recorder.summary()
    print(format_summary(summary, options.window_sec), flush=True)
    if options.output:
        folder = Path(options.output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
        if recorder.speech:
            import soundfile
            rate = recorder.speech_info.sample_rate if recorder.speech_info else 24000
            soundfile.write(str(folder / "speech.wav"),
                            np.frombuffer(bytes(recorder.speech), dtype="<i2"), rate)
    recorder.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
