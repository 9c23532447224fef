"""omni_ros_barge_in_replay: replay a barge-in recording (omni_node's `barge_in_record_path`)
through a fresh barge-in detector and compare its decisions with the node's.

    omni_ros_barge_in_replay /tmp/robot.obr
    omni_ros_barge_in_replay /tmp/robot.obr --set residual_gate_db=12 --set threshold=0.4

Without `--set` the replay is the node's detector again and gives the same barge-ins at the same
stamps (the tool says so, or where they differ). With `--set` the detector is built with those
keyword arguments instead of the node's (the names of flow/bargein.BargeInDetector's: threshold,
min_speech_ms, vad_gain_db, echo_delay_ms, residual_gate_db, reference_hangover_ms) and the
run-time settings the recording holds do not override them: what the robot would have done with
other parameters, on exactly what it heard. Times are seconds from the recording's first mic
chunk. No ROS needed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from omni_ros.flow.bargein import BargeInDetector
from omni_ros.flow.bargein_record import (BARGE_IN, MIC, REFERENCE, RESET, SETTINGS, Recording,
                                          RecordingError, read_recording)
from omni_ros.flow.echo import make_echo_canceller
from omni_ros.flow.vad import VoiceActivity

@dataclass
class Replay:
    recorded: List[int]                     # barge-in onsets (ns) the node's detector gave
    replayed: List[int] = field(default_factory=list)
    counters: Dict[str, object] = field(default_factory=dict)
    first_mic_ns: Optional[int] = None

    @property
    def same(self) -> bool:
        return self.recorded == self.replayed


def replay(recording: Recording, overrides: Optional[Mapping[str, float]] = None) -> Replay:
    """The recording's inputs through a detector built as the node built it, with `overrides`
    for its keyword arguments (those then win over the run-time settings recorded too)."""
    overrides = dict(overrides or {})
    kwargs = dict(recording.header.get("detector", {}))
    kwargs.update(overrides)
    detector = BargeInDetector(VoiceActivity(), make_echo_canceller(
        recording.header.get("echo_canceller", "auto")), **kwargs)
    out = Replay(recording.decisions)
    for kind, stamp, payload in recording.records:
        if kind == MIC:
            if out.first_mic_ns is None:
                out.first_mic_ns = stamp
            onset = detector.push_mic(stamp, payload)
            if onset is not None:
                out.replayed.append(onset)
        elif kind == REFERENCE:
            detector.push_reference(stamp, payload)
        elif kind == RESET:
            detector.reset()
        elif kind == SETTINGS:
            detector.apply_settings({k: v for k, v in payload.items() if k not in overrides})
    out.counters = detector.diagnostic_values()
    return out


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise argparse.ArgumentTypeError(f"{text!r} is not a number")


def _assignment(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--set takes NAME=VALUE, got {text!r}")
    return name.strip(), _number(value.strip())


def describe(recording: Recording, result: Replay, overridden: bool) -> List[str]:
    t0 = result.first_mic_ns or 0
    at = lambda ns: f"{(ns - t0) / 1e9:.3f}"   # noqa: E731
    h = recording.header
    lines = [f"recorded {h.get('started', '?')} by {h.get('node', '?')}: "
             f"{recording.seconds(MIC):.1f} s of mic, {recording.seconds(REFERENCE):.1f} s of "
             f"the robot's speech; detector {h.get('detector', {})}, echo canceller "
             f"{h.get('echo_canceller', 'auto')}"
             + (" (cut short: the node stopped mid-record)" if recording.truncated else ""),
             f"times below in seconds from the first mic chunk, stamped {t0} ns"]
    lines.append(f"node's barge-ins ({len(result.recorded)}): "
                 + (", ".join(at(o) for o in result.recorded) or "none"))
    lines.append(f"replayed ({len(result.replayed)}): "
                 + (", ".join(at(o) for o in result.replayed) or "none"))
    if result.same:
        lines.append("the same decisions at the same stamps")
    else:
        gone = sorted(set(result.recorded) - set(result.replayed))
        new = sorted(set(result.replayed) - set(result.recorded))
        lines.append(f"differ: {len(gone)} of the node's not replayed ({', '.join(at(o) for o in gone) or '-'}), "
                     f"{len(new)} new ({', '.join(at(o) for o in new) or '-'})"
                     + ("" if overridden else ": the replay should match the node; was the "
                        "recording made by another omni_ros version or machine?"))
    c = result.counters
    lines.append(f"replayed detector: ERLE {c.get('erle_db')} dB, {c.get('frames_scored')} frames "
                 f"while the robot spoke, {c.get('frames_vad')} scored by the VAD, "
                 f"{c.get('onsets')} runs of speech begun, {c.get('triggers')} barge-ins")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="omni_ros_barge_in_replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", help="a file omni_node wrote (barge_in_record_path)")
    parser.add_argument("--set", dest="overrides", action="append", type=_assignment, default=[],
                        metavar="NAME=VALUE", help="a BargeInDetector keyword argument to replay "
                        "with instead of the node's (repeatable)")
    args = parser.parse_args(argv)
    try:
        recording = read_recording(args.recording)
        result = replay(recording, dict(args.overrides))
    except (OSError, RecordingError, TypeError) as error:   # TypeError: a --set name it lacks
        print(f"[omni_ros_barge_in_replay] {error}", file=sys.stderr)
        return 1
    print("\n".join(describe(recording, result, bool(args.overrides))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
