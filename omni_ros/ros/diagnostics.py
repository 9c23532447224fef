"""omni_node's /diagnostics: one DiagnosticStatus per concern (camera, microphone, model, speech),
named `<fully qualified node name>: <concern>` (`/robot1/omni_node: camera`), hardware_id the
node's namespace, each with the level of the worst condition that holds and every condition named
in its message.

    values_of(array_or_arrays, "omni_node")   # every value omni_node published, merged
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Union

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

CONCERNS = ("camera", "microphone", "model", "speech")
OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
LARGE_FRAME_BYTES = 512 * 1024     # Fast DDS's default shared-memory segment
LOST_FRAME_SHARE = 0.5             # received below this share of the publisher's rate: frames lost
LARGE_FRAME_FIX = ("give the camera driver's process and omni_node the large-frame Fast DDS "
                   "profile: FASTDDS_DEFAULT_PROFILES_FILE=<omni_ros>/config/fastdds_large_frames.xml")


class Concern:
    """One status being assembled: conditions found, values shown."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.level = OK
        self.conditions: List[str] = []
        self.values: Dict[str, object] = {}

    def flag(self, level, text: str) -> None:
        self.level = max(self.level, level)
        self.conditions.append(text)

    def status(self, node_name: str, namespace: str) -> DiagnosticStatus:
        return DiagnosticStatus(level=self.level, name=f"{node_name}: {self.name}",
                                hardware_id=namespace,
                                message="; ".join(self.conditions) or "ok",
                                values=[KeyValue(key=k, value=str(v)) for k, v in self.values.items()])


class StampRate:
    """The rate a sender's stamps imply: the smallest step between consecutive stamps seen in a
    period (when messages are lost, those that arrive still come, now and then, one period
    apart), and the size of the last message."""

    def __init__(self) -> None:
        self._last: Optional[int] = None
        self._min_step: Optional[int] = None
        self.size = 0

    def add(self, stamp_ns: int, size: int) -> None:
        if self._last is not None and stamp_ns > self._last:
            step = stamp_ns - self._last
            self._min_step = step if self._min_step is None else min(self._min_step, step)
        self._last, self.size = stamp_ns, size

    def take(self) -> Optional[float]:
        """Messages per second the stamps of this period imply (None: too few); starts a new one."""
        rate = 1e9 / self._min_step if self._min_step else None
        self._min_step = None
        return rate


class PeriodRate:
    """A counter's growth per second between two reports."""

    def __init__(self) -> None:
        self._count: Optional[int] = None
        self._time = 0.0

    def take(self, count: int, now: float) -> Optional[float]:
        rate = None
        if self._count is not None and now > self._time:
            rate = (count - self._count) / (now - self._time)
        self._count, self._time = count, now
        return rate


class NodeHealth:
    """What the node's inputs, model and speech look like this period, as concerns."""

    def __init__(self) -> None:
        self.frame_stamps = StampRate()         # fed by the camera input
        self.rates = {"camera": PeriodRate(), "microphone": PeriodRate()}
        self._last_counts: Dict[str, int] = {}     # counter -> its value at the last report

    def assess(self, camera, mic, engine, node_counters: Dict[str, int],
               silence_limit: float, now: Optional[float] = None) -> List[Concern]:
        """camera, mic: omni_ros.ros.sensor_inputs' inputs; engine: the FlowEngine."""
        now = time.monotonic() if now is None else now
        concerns = {name: Concern(name) for name in CONCERNS}
        cam, mic_c, model, speech = (concerns[n] for n in CONCERNS)
        mic_counters = {**mic.counters, **{f"audio_{k}": v for k, v in mic.stream.counters.snapshot().items()}}
        for concern, source, counters, received_key in (
                (cam, camera, camera.counters, "frames_received"),
                (mic_c, mic, mic_counters, "audio_messages_received")):
            silent = round(now - source.last_at, 2)
            rate = self.rates[concern.name].take(counters[received_key], now)
            concern.values.update(counters)
            concern.values.update({f"{concern.name}_silent_sec": silent,
                                   f"{concern.name}_rate_hz": round(rate or 0.0, 2)})
            if silent > silence_limit:
                concern.flag(WARN, f"no input for {silent:.1f} s")
            refused = counters.get("frames_refused", 0) + counters.get("audio_messages_refused", 0)
            new = self._grown(f"{concern.name}_refused", refused)
            if new > 0:
                concern.flag(WARN, f"{new} messages refused this period ({refused} in all): see the log")
        if mic.refusing:
            mic_c.flag(WARN, f"audio refused: {mic.refusing}")
        if camera.refusing:
            cam.flag(WARN, f"frames refused: {camera.refusing}")
        report = engine.last_report
        if report is not None and report.audio_coverage == 0.0 and mic_c.level == OK:
            mic_c.flag(WARN, "no microphone audio in the last window")
        received, stamped = cam.values["camera_rate_hz"], self.frame_stamps.take()
        cam.values["camera_stamped_rate_hz"] = round(stamped or 0.0, 2)
        if stamped and self.frame_stamps.size > LARGE_FRAME_BYTES and received < LOST_FRAME_SHARE * stamped:
            cam.flag(WARN, f"frames arrive at {received:.1f}/s, their stamps say about {stamped:.0f}/s: "
                           f"large frames are being lost; {LARGE_FRAME_FIX}")
        for key, value in engine.diagnostic_values().items():
            (speech if key.startswith(("speech_", "barge_in")) else model).values[key] = value
        clipped = speech.values.get("speech_samples_clipped", 0)
        new = self._grown("speech_samples_clipped", clipped)
        if new > 0:
            speech.flag(WARN, f"{new} samples of the robot's speech over full scale this period, "
                              f"clipped ({clipped} in all)")
        ended = speech.values.get("barge_in_record_ended")
        if ended and ended != "closed":
            speech.flag(WARN, f"barge-in recording stopped ({ended}): barge_in_record_max_mb, "
                              f"or the disk; barge-in itself runs on")
        model.values.update(node_counters)
        for warning in engine.warnings():
            model.flag(WARN, warning)
        if report is not None and report.error:
            model.flag(ERROR, f"unit failed: {report.error}")
        return list(concerns.values())

    def _grown(self, name: str, count: int) -> int:
        """How much the counter `name` grew since the last report."""
        grown = count - self._last_counts.get(name, 0)
        self._last_counts[name] = count
        return grown


def values_of(arrays: Union[DiagnosticArray, Iterable[DiagnosticArray]], node: str) -> Dict[str, str]:
    """Every value the named node published (its concerns merged), newest last wins. `node`: its
    name (`omni_node`) or fully qualified name (`/robot1/omni_node`)."""
    if isinstance(arrays, DiagnosticArray):
        arrays = [arrays]
    values: Dict[str, str] = {}
    for array in arrays:
        for status in array.status:
            owner = status.name.split(": ", 1)[0]
            if owner == node or owner.rsplit("/", 1)[-1] == node:
                values.update({kv.key: kv.value for kv in status.values})
    return values
