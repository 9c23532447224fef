"""omni_node: the model node. Camera and microphone in, one duplex unit per Omni-Flow window,
speech, text, state, proactive alerts and diagnostics out.

The node is a thin shell: Omni-Flow logic lives in omni_ros.flow, the model behind a backend
plugin. Sensor callbacks only convert and buffer; units run on a worker thread so input keeps
flowing while the model computes; speech is released in real time by a steady timer.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from typing import Optional

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rcl_interfaces.msg import SetParametersResult
from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from omni_ros.flow.audio import AudioFormatError, AudioInputStream
from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.duplex import SPEAKING, DuplexLoop, DuplexParams, UnitReport
from omni_ros.flow.speech import SpeechPacer
from omni_ros.flow.types import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, UnitInput
from omni_ros.msg import DuplexState, FlowTick, OmniText, ProactiveAlert
from omni_ros.ros import qos
from omni_ros.ros.conversions import (SUPPORTED_ENCODINGS, ImageFormatError, compressed_to_rgb,
                                      image_to_rgb, ns_to_stamp, stamp_to_ns)
from omni_ros.ros.parameters import SPECS_BY_NAME, check_value, declare_all
from omni_ros.ros.runner import StartupError, run_node
from omni_ros.runtime.registry import BackendError, BackendSettings, create_session

SESSION_OPTION_PARAMETERS = ("system_prompt", "standing_instruction", "force_listen_count", "listen_prob_scale",
                             "temperature", "top_k", "top_p", "repetition_penalty",
                             "max_text_tokens_per_unit", "max_context_units", "seed",
                             "window_sec")
ALERT_LEVELS = {"INFO": ProactiveAlert.INFO, "WARN": ProactiveAlert.WARN,
                "ERROR": ProactiveAlert.ERROR}
RECENT_WINDOWS = 60   # compute-time statistics in /diagnostics cover this many windows
LOG_THROTTLE_SEC = 5.0


class _LockedFrameBuffer:
    """The WindowBuffer as the duplex loop sees it: locked, and frames decoded only when taken.

    Sensor callbacks store the received image message; only the newest frame of a window is
    ever converted, so frames the model does not use cost no conversion.
    """

    def __init__(self, buffer: WindowBuffer, lock: threading.Lock, decode_frame) -> None:
        self._buffer = buffer
        self._lock = lock
        self._decode_frame = decode_frame
        self.window_ns = buffer.window_ns

    def take_window(self, window_index: int):
        with self._lock:
            frame, stamp_ns, audio, coverage = self._buffer.take_window(window_index)
        image = self._decode_frame(frame) if frame is not None else None
        return image, (stamp_ns if image is not None else None), audio, coverage

    def clear(self) -> None:
        with self._lock:
            self._buffer.clear()


class OmniNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("omni_node", **kwargs)
        self.settings = declare_all(self)
        self.window_ns = int(round(self.settings["window_sec"] * 1e9))
        self.session = self._create_session()
        self._warm_up()

        self.input_counters = {"frames_received": 0, "frames_refused": 0, "frames_undecodable": 0,
                               "audio_messages_received": 0, "audio_messages_refused": 0,
                               "ticks_received": 0, "ticks_dropped_overload": 0,
                               "ticks_wrong_window": 0, "speech_chunks_published": 0}
        self.buffer = WindowBuffer(self.window_ns,
                                   max_future_windows=self.settings["max_future_windows"])
        self.buffer_lock = threading.Lock()
        self.audio_input = AudioInputStream(self.settings["audio_sample_rate"],
                                            self.settings["audio_channels"],
                                            self.settings["audio_sample_format"])
        self.loop = DuplexLoop(
            self.session, _LockedFrameBuffer(self.buffer, self.buffer_lock, self._decode_frame),
            speech_detector=self._create_voice_activity(),
            params=DuplexParams(window_ns=self.window_ns,
                                speech_threshold=self.settings["speech_threshold"],
                                proactive_lookback_windows=self.settings[
                                    "proactive_lookback_windows"]),
            standing_instruction=self.settings["standing_instruction"])
        self.loop_lock = threading.Lock()
        self.pacer = SpeechPacer(OUTPUT_SAMPLE_RATE, self.settings["speech_chunk_ms"])
        self.pacer_lock = threading.Lock()
        self.recent_compute_ms = deque(maxlen=RECENT_WINDOWS)
        self.last_report: Optional[UnitReport] = None
        self.last_error: Optional[str] = None

        # outputs
        self.speech_publisher = self.create_publisher(AudioData, "speech/audio", qos.SPEECH)
        self.speech_stamped_publisher = self.create_publisher(AudioDataStamped,
                                                              "speech/audio_stamped", qos.SPEECH)
        self.speech_info_publisher = self.create_publisher(AudioInfo, "speech/audio_info",
                                                           qos.AUDIO_INFO)
        self.text_publisher = self.create_publisher(OmniText, "omni/text", qos.OUTPUT)
        self.state_publisher = self.create_publisher(DuplexState, "omni/state", qos.OUTPUT)
        self.alert_publisher = self.create_publisher(ProactiveAlert, "omni/alerts", qos.OUTPUT)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics",
                                                           qos.OUTPUT)
        self.speech_info_publisher.publish(AudioInfo(
            channels=1, sample_rate=OUTPUT_SAMPLE_RATE, sample_format="S16LE",
            bitrate=OUTPUT_SAMPLE_RATE * 16, coding_format="wave"))

        # inputs (one executor thread: a multi-threaded executor's GIL contention slowed the
        # unit worker several-fold; callbacks here are short, the model runs on the worker)
        self.create_subscription(Image, "camera/image_raw", self.on_image, qos.CAMERA)
        if self.settings["use_compressed_image"]:
            self.create_subscription(CompressedImage, "camera/image_raw/compressed",
                                     self.on_image, qos.CAMERA)
        self.create_subscription(AudioDataStamped, "mic/audio_stamped", self.on_audio,
                                 qos.MIC_AUDIO)
        self.create_subscription(AudioInfo, "mic/audio_info", self.on_audio_info, qos.AUDIO_INFO)
        self.create_subscription(FlowTick, "omni_flow/tick", self.on_tick, qos.TICK)
        self.create_service(Trigger, "omni/reset", self.on_reset)
        self.add_on_set_parameters_callback(self.on_set_parameters)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(min(0.02, self.settings["speech_chunk_ms"] / 4000.0),
                          self.release_speech, clock=steady)
        self.create_timer(self.settings["diagnostics_period_sec"], self.publish_diagnostics,
                          clock=steady)

        self.pending_ticks: "queue.Queue" = queue.Queue(maxsize=2)
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._run_units, name="omni_units", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"ready: backend={self.settings['backend']} model={self.settings['model_path']} "
            f"window={self.settings['window_sec']:.3f}s speech_chunk={self.settings['speech_chunk_ms']}ms")

    # -- start-up ------------------------------------------------------------------------------
    def _create_session(self):
        if not self.settings["model_path"]:
            raise StartupError("parameter model_path is empty: point it at a MiniCPM-o 4.5 "
                               "checkpoint folder, or write a tiny one with "
                               "`omni_ros_tiny_checkpoint DIR` and pass -p model_path:=DIR")
        for name in ("dtype",):
            reason = check_value(SPECS_BY_NAME[name], self.settings[name])
            if reason:
                raise StartupError(reason)
        options = {name: self.settings[name] for name in SESSION_OPTION_PARAMETERS}
        try:
            return create_session(self.settings["backend"], BackendSettings(
                model_path=self.settings["model_path"], device=self.settings["device"],
                dtype=self.settings["dtype"], session_options=options))
        except BackendError as error:
            raise StartupError(str(error)) from error

    def _warm_up(self) -> None:
        """Run the first, slow unit before any real window: lazy initialisation would otherwise
        make the first windows miss real time. A session may offer `warmup()` covering every
        path (speaking included); otherwise one silent unit runs and the session is reset."""
        started = time.perf_counter()
        warmup = getattr(self.session, "warmup", None)
        if callable(warmup):
            warmup()
        else:
            samples = self.window_ns * INPUT_SAMPLE_RATE // 1_000_000_000
            self.session.run_unit(UnitInput(
                window_index=0, epoch=0, start_ns=0, end_ns=self.window_ns,
                image=np.zeros((64, 64, 3), dtype=np.uint8), image_stamp_ns=0,
                audio=np.zeros(samples, dtype=np.float32)))
            self.session.reset()
        self.get_logger().info(f"model warmed up in {time.perf_counter() - started:.2f} s")

    def _create_voice_activity(self):
        from omni_ros.flow.vad import VoiceActivity
        return VoiceActivity()

    # -- inputs --------------------------------------------------------------------------------
    def on_image(self, message) -> None:
        self.input_counters["frames_received"] += 1
        if isinstance(message, Image) and message.encoding not in SUPPORTED_ENCODINGS:
            self.input_counters["frames_refused"] += 1
            self.get_logger().warning(
                f"camera frame refused: encoding {message.encoding!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ENCODINGS)})",
                throttle_duration_sec=LOG_THROTTLE_SEC)
            return
        with self.buffer_lock:
            self.buffer.add_frame(stamp_to_ns(message.header.stamp), message)

    def _decode_frame(self, message):
        try:
            if isinstance(message, CompressedImage):
                return compressed_to_rgb(message)
            return image_to_rgb(message)
        except ImageFormatError as error:
            self.input_counters["frames_undecodable"] += 1
            self.get_logger().warning(f"camera frame dropped: {error}",
                                      throttle_duration_sec=LOG_THROTTLE_SEC)
            return None

    def on_audio_info(self, message: AudioInfo) -> None:
        try:
            self.audio_input.set_format(message.sample_rate, message.channels,
                                        message.sample_format)
            self.get_logger().info(f"microphone format: {message.sample_format} "
                                   f"{message.channels} ch {message.sample_rate} Hz")
        except AudioFormatError as error:
            self.get_logger().error(f"mic/audio_info refused, keeping the previous format: {error}")

    def on_audio(self, message: AudioDataStamped) -> None:
        self.input_counters["audio_messages_received"] += 1
        try:
            stamp_ns, samples = self.audio_input.push(stamp_to_ns(message.header.stamp),
                                                      message.audio.data)
        except AudioFormatError as error:
            self.input_counters["audio_messages_refused"] += 1
            self.get_logger().warning(f"microphone audio refused: {error}",
                                      throttle_duration_sec=LOG_THROTTLE_SEC)
            return
        if samples.shape[0]:
            with self.buffer_lock:
                self.buffer.add_audio(stamp_ns, samples)

    def on_tick(self, tick: FlowTick) -> None:
        self.input_counters["ticks_received"] += 1
        length_ns = stamp_to_ns(tick.end) - stamp_to_ns(tick.start)
        if length_ns != self.window_ns:
            self.input_counters["ticks_wrong_window"] += 1
            self.get_logger().error(
                f"tick window is {length_ns / 1e9:.3f} s but window_sec is "
                f"{self.window_ns / 1e9:.3f} s: set the same window_sec on omni_flow_clock and "
                f"omni_node", throttle_duration_sec=LOG_THROTTLE_SEC)
            return
        while True:
            try:
                self.pending_ticks.put_nowait((tick, time.monotonic()))
                return
            except queue.Full:
                # The model is behind: the oldest waiting window is skipped (counted by the loop).
                try:
                    self.pending_ticks.get_nowait()
                    self.input_counters["ticks_dropped_overload"] += 1
                except queue.Empty:
                    pass

    def on_reset(self, request, response):
        with self.loop_lock:
            self.loop.reset()
        with self.pacer_lock:
            dropped = self.pacer.flush()
        response.success = True
        response.message = f"session reset; {dropped} pending speech chunks dropped"
        self.get_logger().info(response.message)
        return response

    def on_set_parameters(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            spec = SPECS_BY_NAME.get(parameter.name)
            if spec is None:
                continue
            reason = check_value(spec, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for parameter in parameters:
            name, value = parameter.name, parameter.value
            if name not in SPECS_BY_NAME:
                continue
            self.settings[name] = value
            if name == "standing_instruction":
                self.loop.standing_instruction = value
            elif name == "speech_threshold":
                self.loop.params.speech_threshold = value
            elif name == "proactive_lookback_windows":
                self.loop.params.proactive_lookback_windows = value
            options = getattr(self.session, "options", None)
            if options is not None and hasattr(options, name):
                setattr(options, name, value)
        return SetParametersResult(successful=True)

    # -- units ---------------------------------------------------------------------------------
    def _run_units(self) -> None:
        while not self.stopping.is_set():
            try:
                tick, received = self.pending_ticks.get(timeout=0.2)
            except queue.Empty:
                continue
            # The window's last samples are still in flight when its tick arrives (a mic chunk
            # is stamped when its capture starts, the resampler holds a few ms back): wait.
            delay = received + self.settings["input_grace_ms"] / 1000.0 - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                return
            with self.loop_lock:
                report = self.loop.on_tick(tick.index, tick.epoch)
            if report is not None:
                self._publish_report(report)

    def _publish_report(self, report: UnitReport) -> None:
        self.last_report = report
        self.recent_compute_ms.append(report.compute_ms)
        if report.error:
            self.last_error = report.error
            self.get_logger().error(f"window {report.window_index}: unit failed: {report.error}",
                                    throttle_duration_sec=LOG_THROTTLE_SEC)
        if report.speech.shape[0]:
            with self.pacer_lock:
                self.pacer.enqueue(report.window_index, report.speech, time.monotonic_ns())
        header_stamp = self.get_clock().now().to_msg()
        state = DuplexState()
        state.header.stamp = header_stamp
        state.window_index = report.window_index
        state.state = DuplexState.SPEAKING if report.state == SPEAKING else DuplexState.LISTENING
        state.end_of_turn = report.end_of_turn
        state.proactive = report.proactive
        state.speak_probability = float(report.speak_probability)
        state.compute_ms = float(report.compute_ms)
        self.state_publisher.publish(state)
        if report.text or (report.state == SPEAKING and report.end_of_turn):
            self.text_publisher.publish(OmniText(header=state.header,
                                                 window_index=report.window_index,
                                                 text=report.text,
                                                 end_of_turn=report.end_of_turn))
        if report.alert is not None:
            alert = ProactiveAlert()
            alert.header.stamp = header_stamp
            alert.window_index = report.window_index
            alert.level = ALERT_LEVELS[self.settings["alert_level"]]
            alert.text = report.alert.text
            alert.instruction = report.alert.instruction
            alert.confidence = float(report.alert.confidence)
            if report.alert.evidence_stamp_ns is not None:
                alert.evidence_stamp = ns_to_stamp(report.alert.evidence_stamp_ns)
            self.alert_publisher.publish(alert)

    def release_speech(self) -> None:
        with self.pacer_lock:
            chunks = self.pacer.due(time.monotonic_ns())
        for chunk in chunks:
            audio = AudioData(data=chunk.data_bytes)
            stamped = AudioDataStamped(audio=audio)
            stamped.header.stamp = self.get_clock().now().to_msg()
            stamped.header.frame_id = f"window_{chunk.window_index}"
            self.speech_publisher.publish(audio)
            self.speech_stamped_publisher.publish(stamped)
            self.input_counters["speech_chunks_published"] += 1

    # -- diagnostics ---------------------------------------------------------------------------
    def diagnostic_values(self) -> dict:
        values = dict(self.input_counters)
        values.update({f"buffer_{k}": v for k, v in self.buffer.counters.snapshot().items()})
        values.update({f"audio_{k}": v for k, v in self.audio_input.counters.snapshot().items()})
        values.update({f"loop_{k}": v for k, v in self.loop.counters.snapshot().items()})
        values.update({f"speech_{k}": v for k, v in self.pacer.counters.snapshot().items()})
        recent = list(self.recent_compute_ms)
        window_ms = self.window_ns / 1e6
        if recent:
            values["compute_ms_last"] = round(recent[-1], 2)
            values["compute_ms_mean"] = round(sum(recent) / len(recent), 2)
            values["compute_ms_max"] = round(max(recent), 2)
        values["window_ms"] = window_ms
        return values

    def publish_diagnostics(self) -> None:
        values = self.diagnostic_values()
        status = DiagnosticStatus(name=f"{self.get_name()}: Omni-Flow", hardware_id="omni_ros")
        status.level, status.message = DiagnosticStatus.OK, "running"
        report = self.last_report
        if report is not None and report.error:
            status.level, status.message = DiagnosticStatus.ERROR, f"unit failed: {report.error}"
        elif values.get("compute_ms_max", 0.0) > values["window_ms"]:
            status.level = DiagnosticStatus.WARN
            status.message = "units take longer than a window: windows are being skipped"
        elif report is not None and report.audio_coverage == 0.0:
            status.level, status.message = DiagnosticStatus.WARN, "no microphone audio in the last window"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def close(self) -> None:
        """Stop the unit worker (it finishes the unit in hand) before the node is destroyed."""
        self.stopping.set()
        self.worker.join(timeout=30.0)


def main(args=None) -> int:
    return run_node(OmniNode, args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
