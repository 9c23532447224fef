"""omni_ros_recorder: collect what omni_node publishes and print a summary of the run.

Windows processed, listen/speak per window, seconds of speech out, text, alerts, and compute time
per window against the window length. `--output DIR` also writes summary.json and speech.wav;
`--timeline FILE` also records the camera frames and mic audio, and draws a timeline PNG of the
run (tools/timeline_png.py). `--namespace NS` follows the graph in /NS; with no publisher in sight
after 5 s it says which namespace and ROS_DOMAIN_ID it listens on (graph_hint.py).
The accumulation itself is `RunLog` (no ROS node), which omni_ros_bag_report fills from a bag.
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
from rclpy.executors import ExternalShutdownException
from omni_ros.ros import audio_flavours
from rclpy.node import Node

from omni_ros.flow.audio import AudioFormatError, AudioInputStream
from omni_ros.flow.units import seconds_to_ns
from omni_ros.flow.vad import energy_speech_probability
from omni_ros.msg import DuplexState, OmniText, ProactiveAlert
from omni_ros.ros import qos
from omni_ros.ros.runner import split_ros_args
from omni_ros.ros.conversions import header_stamp_ns, stamp_to_ns
from omni_ros.ros.parameters import SPECS_BY_NAME
from omni_ros.tools.graph_hint import GraphWatch, add_namespace_argument, normalize_namespace
from omni_ros.tools.timeline_png import draw_timeline

STATE_LETTERS = {DuplexState.LISTENING: "L", DuplexState.SPEAKING: "S",
                 DuplexState.INTERRUPTED: "I"}
ALERT_LEVELS = {ProactiveAlert.INFO: "INFO", ProactiveAlert.WARN: "WARN",
                ProactiveAlert.ERROR: "ERROR"}
MAX_WINDOWS = 100_000          # a recorder left running for a day stays bounded
MAX_SPEECH_SECONDS = 600


class RunLog:
    """What a run published, accumulated message by message (no ROS node here): the recorder
    feeds it live over DDS, omni_ros_bag_report from a bag. Bounded: MAX_WINDOWS per kind."""

    def __init__(self, keep_speech: bool = False, window_sec: float = 1.0) -> None:
        self.window_ns = seconds_to_ns(window_sec)
        self.frame_windows: dict = {}       # window -> camera frames stamped in it
        self.mic_energy: dict = {}          # window -> [max speech probability, chunks]
        self.speech_windows: dict = {}      # window -> speech samples published in it
        self.mic_stream: Optional[AudioInputStream] = None
        self.states: list = []
        self.texts: list = []
        self.alerts: list = []
        self.speech_chunks = 0
        self.speech_bytes = 0
        self.speech_info = None   # audio_flavours.info_view of speech/audio_info
        self.keep_speech = keep_speech
        self.speech = bytearray()

    def on_frame(self, raw: bytes) -> None:
        """A camera frame as serialized CDR bytes (only its header stamp is read)."""
        stamp = header_stamp_ns(raw)
        if stamp is not None and len(self.frame_windows) < MAX_WINDOWS:
            k = stamp // self.window_ns
            self.frame_windows[k] = self.frame_windows.get(k, 0) + 1

    def on_mic_info(self, message) -> None:
        try:
            self.mic_stream = AudioInputStream(*audio_flavours.info_format(message))
        except AudioFormatError:
            self.mic_stream = None

    def on_mic(self, message) -> None:
        if self.mic_stream is None:
            # omni_node's microphone defaults, until mic/audio_info says otherwise
            self.mic_stream = AudioInputStream(*(SPECS_BY_NAME[name].default for name in (
                "audio_sample_rate", "audio_channels", "audio_sample_format")))
        try:
            chunk = audio_flavours.mic_chunk(message)
            audio_flavours.apply_format(self.mic_stream, chunk)
            mono = self.mic_stream.decode(chunk.data)
        except Exception:  # noqa: BLE001 - a recorder never dies of bad input
            return
        k = chunk.stamp_ns // self.window_ns
        if len(self.mic_energy) < MAX_WINDOWS:
            entry = self.mic_energy.setdefault(k, [0.0, 0])
            entry[0] = max(entry[0], energy_speech_probability(mono))
            entry[1] += 1

    def on_state(self, message: DuplexState) -> None:
        if len(self.states) < MAX_WINDOWS:
            self.states.append(message)

    def on_text(self, message: OmniText) -> None:
        if len(self.texts) < MAX_WINDOWS:
            self.texts.append(message)

    def on_alert(self, message: ProactiveAlert) -> None:
        if len(self.alerts) < MAX_WINDOWS:
            self.alerts.append(message)

    def on_speech(self, message) -> None:
        try:
            data = audio_flavours.speech_pcm(message)[0]
        except AudioFormatError:
            return
        k = stamp_to_ns(message.header.stamp) // self.window_ns
        if len(self.speech_windows) < MAX_WINDOWS:
            self.speech_windows[k] = self.speech_windows.get(k, 0) + len(data) // 2
        self.speech_chunks += 1
        self.speech_bytes += len(data)
        if self.keep_speech and len(self.speech) < MAX_SPEECH_SECONDS * 48000:
            self.speech.extend(data)

    def on_speech_info(self, message) -> None:
        self.speech_info = audio_flavours.info_view(message)

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


class Recorder(Node):
    """The live recorder: subscribes over DDS and feeds a RunLog (`runlog`)."""

    def __init__(self, keep_speech: bool, inputs: bool = False, window_sec: float = 1.0,
                 namespace: str = "") -> None:
        super().__init__("omni_recorder", namespace=normalize_namespace(namespace) or None)
        self.runlog = RunLog(keep_speech=keep_speech, window_sec=window_sec)
        self.ready_at: Optional[float] = None
        self.inputs = inputs
        run = self.runlog
        self.create_subscription(DuplexState, "omni/state", run.on_state, qos.OUTPUT)
        self.create_subscription(OmniText, "omni/text", run.on_text, qos.OUTPUT)
        self.create_subscription(ProactiveAlert, "omni/alerts", run.on_alert, qos.OUTPUT)
        self.create_subscription(audio_flavours.SPEECH_STAMPED_TYPE, "speech/audio_stamped",
                                 run.on_speech, qos.SPEECH)
        self.create_subscription(audio_flavours.AudioInfo, "speech/audio_info",
                                 self.on_speech_info, qos.AUDIO_INFO)
        self.watch = GraphWatch(self, ["omni/state", "speech/audio_info"], "omni_ros_recorder")

    def _subscribe_inputs(self) -> None:
        """For the timeline: what the robot's camera and microphone sent. Subscribed once
        omni_node is up, so a scene player waiting for subscribers still waits for the node."""
        from sensor_msgs.msg import Image  # noqa: PLC0415
        run = self.runlog
        self.create_subscription(Image, "camera/image_raw", run.on_frame, qos.CAMERA, raw=True)
        self.create_subscription(audio_flavours.MIC_TYPE, "mic/audio_stamped", run.on_mic,
                                 qos.MIC_AUDIO)
        if audio_flavours.MIC_INFO_TYPE is not None:
            self.create_subscription(audio_flavours.MIC_INFO_TYPE, "mic/audio_info",
                                     run.on_mic_info, qos.AUDIO_INFO)

    def on_speech_info(self, message) -> None:
        self.runlog.on_speech_info(message)
        if self.ready_at is None:
            self.ready_at = time.monotonic()
            if self.inputs:
                self._subscribe_inputs()

    def summary(self) -> dict:
        return self.runlog.summary()


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
    add_namespace_argument(parser)
    parser.add_argument("--output", default=None, help="folder for summary.json and speech.wav")
    parser.add_argument("--timeline", default=None, metavar="FILE",
                        help="draw a timeline PNG of the run into FILE")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    own_args, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    options = parse_args(own_args)
    rclpy.init(args=[sys.argv[0], *ros_args])
    recorder = Recorder(keep_speech=options.output is not None,
                        inputs=options.timeline is not None, window_sec=options.window_sec,
                        namespace=options.namespace)
    started = time.monotonic()
    try:
        while rclpy.ok():
            rclpy.spin_once(recorder, timeout_sec=0.05)
            recorder.watch.poll()
            now = time.monotonic()
            if recorder.ready_at is None and now - started > options.wait_sec:
                print("[omni_ros_recorder] omni_node did not come up (no speech/audio_info)",
                      file=sys.stderr)
                return 1
            if recorder.ready_at is not None and now - recorder.ready_at >= options.duration_sec:
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    summary = recorder.summary()
    print(format_summary(summary, options.window_sec), flush=True)
    if options.output:
        folder = Path(options.output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
        run = recorder.runlog
        if run.speech:
            import soundfile
            rate = run.speech_info.sample_rate if run.speech_info else 24000
            soundfile.write(str(folder / "speech.wav"),
                            np.frombuffer(bytes(run.speech), dtype="<i2"), rate)
    if options.timeline:
        path = draw_timeline(recorder.runlog, options.timeline)
        print(f"[omni_ros_recorder] timeline in {path}", flush=True)
    recorder.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
