"""omni_node: the model node. Camera and microphone in, one duplex unit per Omni-Flow window,
speech, text, state, proactive alerts and diagnostics out.

The node is a thin shell: Omni-Flow logic lives in omni_ros.flow, the model behind a backend
plugin. Sensor callbacks only convert and buffer; units run on a worker thread so input keeps
flowing while the model computes; speech is released in real time by a speaker thread.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Optional

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from rcl_interfaces.msg import SetParametersResult
from omni_ros.ros import audio_flavours
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from omni_ros.flow.audio import AudioFormatError, AudioInputStream, s16le_to_float
from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.bargein import BargeInDetector, make_echo_canceller
from omni_ros.flow.duplex import INTERRUPTED, SPEAKING, DuplexLoop, DuplexParams, UnitReport
from omni_ros.flow.speech import SpeechPacer
from omni_ros.flow.ticks import TickQueue
from omni_ros.flow.types import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, UnitInput
from omni_ros.flow.units import NS_PER_S, ns_to_samples, seconds_to_ns
from omni_ros.msg import DuplexState, FlowTick, OmniText, ProactiveAlert
from omni_ros.ros import qos
from omni_ros.ros.conversions import (ImageFormatError, ImageHeader, check_image,
                                      compressed_to_rgb, downscale, image_to_rgb, ns_to_stamp,
                                      parse_image_header, stamp_to_ns)
from omni_ros.ros.parameters import SPECS_BY_NAME, check_value, declare_all
from omni_ros.ros.runner import StartupError, run_node
from omni_ros.model.token2wav.voice import Voice, VoiceError
from omni_ros.runtime.registry import BackendError, BackendSettings, create_session

SESSION_OPTION_PARAMETERS = ("mode", "system_prompt", "standing_instruction", "force_listen_count",
                             "listen_prob_scale",
                             "temperature", "top_k", "top_p", "repetition_penalty",
                             "max_text_tokens_per_unit", "max_context_units", "seed",
                             "window_sec", "reference_voice", "token2wav_steps")
ALERT_LEVELS = {"INFO": ProactiveAlert.INFO, "WARN": ProactiveAlert.WARN,
                "ERROR": ProactiveAlert.ERROR}
RECENT_WINDOWS = 60   # compute-time statistics in /diagnostics cover this many windows
LOG_THROTTLE_SEC = 5.0
SPEECH_HOLD_POLL_SEC = 0.005   # how often held speech looks again whether it may go out


class _SerializedImage:
    """A camera frame as received (CDR bytes), deserialized only if its window uses it."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


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
        self.window_ns = seconds_to_ns(self.settings["window_sec"])
        self.session = self._create_session()
        self._warm_up()

        self.input_counters = {"frames_received": 0, "frames_refused": 0, "frames_undecodable": 0,
                               "frames_downscaled": 0, "frames_oversized_data": 0,
                               "audio_messages_received": 0, "audio_messages_refused": 0,
                               "audio_info_refused": 0,
                               "ticks_received": 0,
                               "ticks_wrong_window": 0, "speech_chunks_published": 0,
                               "barge_ins": 0, "speech_chunks_dropped_barge_in": 0,
                               "speech_chunks_dropped_turn_end": 0, "session_resets_after_failures": 0,
                               "worker_errors": 0, "executor_errors": 0}
        self._last_frame_at = self._last_audio_at = time.monotonic()
        self._logged_counts = {}   # counter -> value when last logged
        self._logged_at = {}       # counter -> time.monotonic() when last logged
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
                                    "proactive_lookback_windows"],
                                overload_policy=self.settings["overload_policy"],
                                max_merge_windows=self.settings["max_merge_windows"],
                                max_consecutive_failures=self.settings["max_consecutive_failures"],
                                alert_max_units=self.settings["alert_max_units"]),
            standing_instruction=self.settings["standing_instruction"])
        self.loop_lock = threading.Lock()
        self.pacer = SpeechPacer(OUTPUT_SAMPLE_RATE, self.settings["speech_chunk_ms"])
        self.pacer_lock = threading.Lock()
        self.barge_in = self._create_barge_in()
        self.barge_lock = threading.Lock()   # the detector is fed by the executor and the speaker
        self.recent_compute_ms = deque(maxlen=RECENT_WINDOWS)
        self.recent_overhead_ms = deque(maxlen=RECENT_WINDOWS)   # unit time outside the model
        self.recent_vad_ms = deque(maxlen=RECENT_WINDOWS)        # ...of which the VAD's
        self.last_report: Optional[UnitReport] = None
        self.last_error: Optional[str] = None

        # outputs
        # audio_common_msgs of either flavour (ros-drivers or mgonzs13): see audio_flavours
        self.speech_publisher = self.create_publisher(audio_flavours.SPEECH_TYPE, "speech/audio",
                                                      qos.SPEECH)
        self.speech_stamped_publisher = self.create_publisher(audio_flavours.SPEECH_STAMPED_TYPE,
                                                              "speech/audio_stamped", qos.SPEECH)
        self.speech_info_publisher = self.create_publisher(audio_flavours.AudioInfo,
                                                           "speech/audio_info", qos.AUDIO_INFO)
        self.text_publisher = self.create_publisher(OmniText, "omni/text", qos.OUTPUT)
        self.state_publisher = self.create_publisher(DuplexState, "omni/state", qos.OUTPUT)
        self.alert_publisher = self.create_publisher(ProactiveAlert, "omni/alerts", qos.OUTPUT)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics",
                                                           qos.OUTPUT)
        self.speech_info_publisher.publish(audio_flavours.speech_info(
            OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE * self.settings["speech_chunk_ms"] // 1000))
        self.get_logger().info(audio_flavours.describe())

        # inputs (one executor thread: a multi-threaded executor's GIL contention slowed the
        # unit worker several-fold; callbacks here are short, the model runs on the worker)
        # Raw: a frame is kept serialized (its header read from the bytes); only the newest frame
        # of a window is ever deserialized and converted, when its unit runs.
        self.create_subscription(Image, "camera/image_raw", self.on_image, qos.CAMERA, raw=True)
        if self.settings["use_compressed_image"]:
            self.create_subscription(CompressedImage, "camera/image_raw/compressed",
                                     self.on_image, qos.CAMERA)
        self.create_subscription(audio_flavours.MIC_TYPE, "mic/audio_stamped", self.on_audio,
                                 qos.MIC_AUDIO)
        if audio_flavours.MIC_INFO_TYPE is not None:   # mgonzs13: the format is in each message
            self.create_subscription(audio_flavours.MIC_INFO_TYPE, "mic/audio_info",
                                     self.on_audio_info, qos.AUDIO_INFO)
        self.create_subscription(FlowTick, "omni_flow/tick", self.on_tick, qos.TICK)
        self.create_service(Trigger, "omni/reset", self.on_reset)
        self.add_on_set_parameters_callback(self.on_set_parameters)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self.settings["diagnostics_period_sec"], self.publish_diagnostics,
                          clock=steady)

        self.pending_ticks = TickQueue(maxsize=16)
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._run_units, name="omni_units", daemon=True)
        self.worker.start()
        # Speech is released by a thread that sleeps until the next chunk is due (woken when
        # speech is queued or flushed): exact pacing, and no timer waking the executor 50 times
        # a second when there is nothing to play.
        self.speech_wakeup = threading.Event()
        self.speaker = threading.Thread(target=self._release_loop, name="omni_speech", daemon=True)
        self.speaker.start()
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
                dtype=self.settings["dtype"], engine_dir=self.settings["engine_dir"],
                session_options=options))
        except BackendError as error:
            raise StartupError(str(error)) from error
        except VoiceError as error:
            raise StartupError(str(error)) from error
        except Exception as error:  # noqa: BLE001 - a corrupt checkpoint must not end in a traceback
            raise StartupError(f"cannot load the model from {self.settings['model_path']!r}: "
                               f"{type(error).__name__}: {error} (is the checkpoint complete "
                               f"and uncorrupted? re-download it, or write a tiny one with "
                               f"`omni_ros_tiny_checkpoint DIR`)") from error

    def _warm_up(self) -> None:
        """Run the first, slow unit before any real window: lazy initialisation would otherwise
        make the first windows miss real time. A session may offer `warmup()` covering every
        path (speaking included); otherwise one silent unit runs and the session is reset."""
        started = time.perf_counter()
        warmup = getattr(self.session, "warmup", None)
        if callable(warmup):
            warmup()
        else:
            samples = ns_to_samples(self.window_ns, INPUT_SAMPLE_RATE)
            self.session.run_unit(UnitInput(
                window_index=0, epoch=0, start_ns=0, end_ns=self.window_ns,
                image=np.zeros((64, 64, 3), dtype=np.uint8), image_stamp_ns=0,
                audio=np.zeros(samples, dtype=np.float32)))
            self.session.reset()
        self.get_logger().info(f"model warmed up in {time.perf_counter() - started:.2f} s")

    def _create_voice_activity(self):
        from omni_ros.flow.vad import VoiceActivity
        return VoiceActivity()

    def _create_barge_in(self) -> Optional[BargeInDetector]:
        if not self.settings["barge_in"]:
            return None
        import soxr  # noqa: PLC0415
        self._reference_resampler = soxr
        canceller = make_echo_canceller(self.settings["echo_canceller"])
        detector = BargeInDetector(self._create_voice_activity(), canceller,
                                   threshold=self.settings["barge_in_threshold"],
                                   min_speech_ms=self.settings["barge_in_min_speech_ms"],
                                   echo_delay_ms=self.settings["echo_delay_ms"],
                                   residual_gate_db=self.settings["residual_echo_gate_db"])
        self.get_logger().info(f"barge-in on: echo canceller {type(canceller).__name__}")
        return detector

    def _warn(self, key: str, text: str) -> bool:
        """Log a warning unless one of this kind (`key`) was logged in the last LOG_THROTTLE_SEC;
        whether it was logged. Throttled here, not by rclpy: rclpy's logger looks up its
        caller's frame and file before it throttles, about 0.1 ms a call, too much for a
        warning that a flood of bad messages raises on every one."""
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) < LOG_THROTTLE_SEC:
            return False
        self._logged_at[key] = now
        self.get_logger().warning(text)
        return True

    def _log_counter(self, key: str, value: int, message: str) -> None:
        """A throttled warning when an input counter has grown since it was last logged."""
        if value > self._logged_counts.get(key, 0) and self._warn(key, f"{message} ({key} = {value})"):
            self._logged_counts[key] = value

    # -- inputs --------------------------------------------------------------------------------
    def on_image(self, message) -> None:
        self.input_counters["frames_received"] += 1
        self._last_frame_at = time.monotonic()
        stamp_ns = None
        if isinstance(message, (bytes, bytearray, memoryview)):
            try:
                header = parse_image_header(message)
            except ImageFormatError as error:
                return self._refuse_frame("frames_malformed", error)
            stamp_ns, checked, message = header.stamp_ns, header, _SerializedImage(message)
        else:
            checked = message
            if isinstance(message, Image):
                stamp_ns = stamp_to_ns(message.header.stamp)
        if isinstance(checked, (Image, ImageHeader)):
            # Header fields and the data length only: the pixels are decoded for the newest
            # frame of a window, when its unit runs.
            try:
                extra = check_image(checked)
            except ImageFormatError as error:
                return self._refuse_frame("frames_refused", error)
            if extra:
                self.input_counters["frames_oversized_data"] += 1
                self._log_counter("frames_oversized_data", self.input_counters[
                    "frames_oversized_data"], f"camera frame has {extra} bytes beyond height * "
                    f"step; they are ignored")
        with self.buffer_lock:
            before = self.buffer.counters.frames_late + self.buffer.counters.frames_future
            self.buffer.add_frame(stamp_ns if stamp_ns is not None
                                  else stamp_to_ns(message.header.stamp), message)
            after = self.buffer.counters.frames_late + self.buffer.counters.frames_future
        if after > before:
            self._log_counter("frames_out_of_time", after, "camera frame stamped outside the "
                              "open windows (far past or future) dropped")

    def _refuse_frame(self, kind: str, error: ImageFormatError) -> None:
        """Count a refused frame and warn (throttled per `kind` of refusal)."""
        self.input_counters["frames_refused"] += 1
        self._warn(kind, f"camera frame refused: {error}")

    def _decode_frame(self, message):
        try:
            if isinstance(message, _SerializedImage):
                try:
                    message = deserialize_message(message.raw, Image)
                except Exception as error:  # noqa: BLE001 - rclpy raises several kinds
                    raise ImageFormatError(f"cannot deserialize the frame: {error}") from None
            if isinstance(message, CompressedImage):
                image = compressed_to_rgb(message)
            else:
                image = image_to_rgb(message)
            small = downscale(image, self.settings["max_image_side"])
            if small is not image:
                self.input_counters["frames_downscaled"] += 1
            return small
        except ImageFormatError as error:
            self.input_counters["frames_undecodable"] += 1
            self._warn("frames_undecodable", f"camera frame dropped: {error}")
            return None

    def on_audio_info(self, message) -> None:
        try:
            self.audio_input.set_format(*audio_flavours.info_format(message))
            self.get_logger().info(f"microphone format: {message.sample_format} "
                                   f"{message.channels} ch {message.sample_rate} Hz")
        except AudioFormatError as error:
            self.input_counters["audio_info_refused"] += 1
            self.get_logger().error(f"mic/audio_info refused, keeping the previous format: {error}",
                                    throttle_duration_sec=LOG_THROTTLE_SEC)

    def on_audio(self, message) -> None:
        self.input_counters["audio_messages_received"] += 1
        self._last_audio_at = time.monotonic()
        try:
            chunk = audio_flavours.mic_chunk(message)   # mgonzs13: the format comes with it
            if audio_flavours.apply_format(self.audio_input, chunk):
                self.get_logger().info(f"microphone format: {chunk.sample_format} "
                                       f"{chunk.channels} ch {chunk.sample_rate} Hz")
            stamp_ns, samples = self.audio_input.push(chunk.stamp_ns, chunk.data)
        except AudioFormatError as error:
            self.input_counters["audio_messages_refused"] += 1
            self._warn("audio_messages_refused", f"microphone audio refused: {error}")
            return
        counters = self.audio_input.counters
        self._log_counter("audio_partial_frame_bytes", counters.partial_frame_bytes,
                          "microphone message with a byte count that is not a whole number of "
                          "frames: the trailing bytes were dropped")
        self._log_counter("audio_duplicate_chunks", counters.duplicate_chunks,
                          "microphone message repeated (same stamp and data): dropped")
        self._log_counter("audio_nonfinite_samples", counters.nonfinite_samples,
                          "microphone samples that were NaN or inf were replaced by silence")
        if samples.shape[0]:
            with self.buffer_lock:
                self.buffer.add_audio(stamp_ns, samples)
                bc = self.buffer.counters
                late, future, overlap = bc.samples_late, bc.samples_future, bc.samples_overlap
            self._log_counter("buffer_samples_late", late, "microphone audio stamped in a window "
                              "already run (late or far in the past) dropped")
            self._log_counter("buffer_samples_future", future, "microphone audio stamped too far "
                              "in the future dropped")
            self._log_counter("buffer_samples_overlap", overlap, "microphone audio for instants "
                              "already heard (duplicate stamps) dropped")
            if self.barge_in is not None:
                with self.barge_lock:
                    onset_ns = self.barge_in.push_mic(stamp_ns, samples)
                if onset_ns is not None:
                    self._on_barge_in(onset_ns)

    def _on_barge_in(self, onset_ns: int) -> None:
        """The person started talking over the robot: stop the speech now, tell the loop."""
        with self.pacer_lock:
            dropped = self.pacer.flush()
        self.loop.interrupt(onset_ns // self.window_ns)
        self.input_counters["barge_ins"] += 1
        self.input_counters["speech_chunks_dropped_barge_in"] += dropped
        self.get_logger().info(f"barge-in at {onset_ns / NS_PER_S:.3f} s: {dropped} speech chunks "
                               f"dropped", throttle_duration_sec=1.0)

    def on_tick(self, tick: FlowTick) -> None:
        self.input_counters["ticks_received"] += 1
        length_ns = stamp_to_ns(tick.end) - stamp_to_ns(tick.start)
        if length_ns != self.window_ns:
            self.input_counters["ticks_wrong_window"] += 1
            self.get_logger().error(
                f"tick window is {length_ns / NS_PER_S:.3f} s but window_sec is "
                f"{self.window_ns / NS_PER_S:.3f} s: set the same window_sec on omni_flow_clock and "
                f"omni_node", throttle_duration_sec=LOG_THROTTLE_SEC)
            return
        self.pending_ticks.put(tick, time.monotonic())

    def on_reset(self, request, response):
        with self.pacer_lock:
            dropped = self.pacer.flush()
        with self.loop_lock:
            alert = self.loop.reset()
        if self.barge_in is not None:
            with self.barge_lock:
                self.barge_in.reset()
        if alert is not None:
            self._publish_alert(alert, self.loop._last_index or 0)
        response.success = True
        response.message = f"session reset; {dropped} pending speech chunks dropped"
        self.get_logger().info(response.message)
        return response

    def on_set_parameters(self, parameters) -> SetParametersResult:
        voice = None
        for parameter in parameters:
            spec = SPECS_BY_NAME.get(parameter.name)
            if spec is None:
                continue
            reason = check_value(spec, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if parameter.name == "reference_voice" and parameter.value:
                try:
                    voice = Voice.from_wav(parameter.value)   # read once: handed to the session below
                except VoiceError as error:
                    return SetParametersResult(successful=False, reason=str(error))
        for parameter in parameters:
            name, value = parameter.name, parameter.value
            if name not in SPECS_BY_NAME:
                continue
            self.settings[name] = value
            if name == "standing_instruction":
                self.loop.standing_instruction = value
            elif name == "speech_threshold":
                self.loop.params.speech_threshold = value
            elif name in ("proactive_lookback_windows", "overload_policy", "max_merge_windows",
                          "max_consecutive_failures", "alert_max_units"):
                setattr(self.loop.params, name, value)
            elif name == "barge_in_threshold" and self.barge_in is not None:
                self.barge_in.threshold = value
            elif name == "barge_in_min_speech_ms" and self.barge_in is not None:
                self.barge_in.min_speech_frames = max(1, -(-int(value) * 16 // 512))
            options = getattr(self.session, "options", None)
            if options is not None and hasattr(options, name):
                setattr(options, name, value)
            if name == "reference_voice" and hasattr(self.session, "set_voice"):
                with self.loop_lock:
                    self.session.set_voice(voice)
                self.get_logger().info(f"reference voice: {value or 'the checkpoint default'}")
        return SetParametersResult(successful=True)

    # -- units ---------------------------------------------------------------------------------
    def _run_units(self) -> None:
        while not self.stopping.is_set():
            # Ticks that queued while the previous unit ran: run the newest closed window now
            # (the loop skips or merges the ones in between, per overload_policy).
            taken = self.pending_ticks.get_newest(timeout=0.2, max_lag=1)
            if taken is None:
                continue
            tick, received = taken
            # The window's last samples are still in flight when its tick arrives (a mic chunk
            # is stamped when its capture starts, the resampler holds a few ms back): wait.
            delay = received + self.settings["input_grace_ms"] / 1000.0 - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                return
            try:
                with self.loop_lock:
                    report = self.loop.on_tick(tick.index, tick.epoch)
                if report is not None:
                    self._publish_report(report)
            except Exception as error:  # noqa: BLE001 - the worker must outlive anything
                if self.stopping.is_set() or not self.context.ok():
                    return   # shutting down: publishers are gone
                self.input_counters["worker_errors"] += 1
                self.last_error = f"{type(error).__name__}: {error}"
                self.get_logger().error(f"window {tick.index}: {self.last_error}",
                                        throttle_duration_sec=LOG_THROTTLE_SEC)

    def _publish_report(self, report: UnitReport) -> None:
        if self.last_report is not None and report.epoch != self.last_report.epoch:
            with self.pacer_lock:   # a new clock epoch: speech of the old timeline is dropped
                self.pacer.flush()
        self.last_report = report
        self.recent_compute_ms.append(report.compute_ms)
        self.recent_overhead_ms.append(report.compute_ms - report.model_ms)
        self.recent_vad_ms.append(report.vad_ms)
        if report.error:
            self.last_error = report.error
            self.get_logger().error(f"window {report.window_index}: unit failed: {report.error}",
                                    throttle_duration_sec=LOG_THROTTLE_SEC)
        if report.session_reset:
            self.input_counters["session_resets_after_failures"] += 1
            self.get_logger().error(f"model session reset after "
                                    f"{self.settings['max_consecutive_failures']} failed units "
                                    f"in a row", throttle_duration_sec=LOG_THROTTLE_SEC)
        if report.speech.shape[0]:
            with self.pacer_lock:
                self.pacer.enqueue(report.window_index, report.speech, time.monotonic_ns())
            self.speech_wakeup.set()
        elif report.state != SPEAKING:
            # The turn is over: speech of it that has not started playing yet is dropped.
            with self.pacer_lock:
                self.input_counters["speech_chunks_dropped_turn_end"] += \
                    self.pacer.drop_unstarted(time.monotonic_ns())
        header_stamp = self.get_clock().now().to_msg()
        state = DuplexState()
        state.header.stamp = header_stamp
        state.window_index = report.window_index
        state.state = {SPEAKING: DuplexState.SPEAKING, INTERRUPTED: DuplexState.INTERRUPTED}.get(
            report.state, DuplexState.LISTENING)
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
            self._publish_alert(report.alert, report.window_index)

    def _publish_alert(self, found, window_index: int) -> None:
        alert = ProactiveAlert()
        alert.header.stamp = self.get_clock().now().to_msg()
        alert.window_index = int(window_index)
        alert.level = ALERT_LEVELS[self.settings["alert_level"]]
        alert.text = found.text
        alert.instruction = found.instruction
        alert.confidence = float(found.confidence)
        if found.evidence_stamp_ns is not None:
            alert.evidence_stamp = ns_to_stamp(found.evidence_stamp_ns)
        self.alert_publisher.publish(alert)

    def _release_loop(self) -> None:
        while not self.stopping.is_set():
            with self.pacer_lock:
                next_due = self.pacer.next_due_ns()
            timeout = 0.5 if next_due is None else max(0.0, (next_due - time.monotonic_ns()) / NS_PER_S)
            if timeout > 0:
                self.speech_wakeup.wait(timeout)
                self.speech_wakeup.clear()
                continue
            try:
                if not self.release_speech():
                    self.speech_wakeup.wait(SPEECH_HOLD_POLL_SEC)   # held: a barge-in may come
                    self.speech_wakeup.clear()
            except Exception as error:  # noqa: BLE001 - the speaker must outlive anything
                if self.stopping.is_set() or not self.context.ok():
                    return
                self.get_logger().error(f"speech release failed: {error}",
                                        throttle_duration_sec=LOG_THROTTLE_SEC)

    def release_speech(self) -> bool:
        """Publish the speech chunks that are due; False if they were held back because the
        barge-in detector is hearing what may be a person starting to talk."""
        if self.barge_in is not None:
            with self.barge_lock:
                if self.barge_in.holds_speech(time.monotonic()):
                    return False
        with self.pacer_lock:
            chunks = self.pacer.due(time.monotonic_ns())
        for chunk in chunks:
            audio, stamped = audio_flavours.speech_messages(chunk.data_bytes, OUTPUT_SAMPLE_RATE)
            stamped.header.stamp = self.get_clock().now().to_msg()
            stamped.header.frame_id = f"window_{chunk.window_index}"
            self.speech_publisher.publish(audio)
            self.speech_stamped_publisher.publish(stamped)
            self.input_counters["speech_chunks_published"] += 1
            if self.barge_in is not None:
                # The echo canceller's reference: what was just played, on the mic's clock.
                pcm = s16le_to_float(chunk.data_bytes)
                reference = self._reference_resampler.resample(pcm, OUTPUT_SAMPLE_RATE,
                                                               INPUT_SAMPLE_RATE)
                with self.barge_lock:
                    self.barge_in.push_reference(stamp_to_ns(stamped.header.stamp), reference)
        return True

    # -- diagnostics ---------------------------------------------------------------------------
    def on_executor_error(self, error: Exception) -> None:
        """A message that rclpy could not take, or a callback that raised (see runner.py)."""
        self.input_counters["executor_errors"] += 1

    def diagnostic_values(self) -> dict:
        values = dict(self.input_counters)
        values.update(self.pending_ticks.counters.snapshot())   # ticks_put, ticks_superseded, ...
        values.update({f"buffer_{k}": v for k, v in self.buffer.counters.snapshot().items()})
        values.update({f"audio_{k}": v for k, v in self.audio_input.counters.snapshot().items()})
        values.update({f"loop_{k}": v for k, v in self.loop.counters.snapshot().items()})
        values.update({f"speech_{k}": v for k, v in self.pacer.counters.snapshot().items()})
        if self.barge_in is not None:
            values.update({f"barge_in_{k}": v
                           for k, v in self.barge_in.counters.snapshot().items()})
        now = time.monotonic()
        values["camera_silent_sec"] = round(now - self._last_frame_at, 2)
        values["mic_silent_sec"] = round(now - self._last_audio_at, 2)
        values["overload_policy"] = self.loop.params.overload_policy
        recent = list(self.recent_compute_ms)
        window_ms = self.window_ns / 1e6
        if recent:
            values["compute_ms_last"] = round(recent[-1], 2)
            values["compute_ms_mean"] = round(sum(recent) / len(recent), 2)
            values["compute_ms_max"] = round(max(recent), 2)
        if self.recent_overhead_ms:
            values["unit_overhead_ms_mean"] = round(
                sum(self.recent_overhead_ms) / len(self.recent_overhead_ms), 3)
            values["unit_vad_ms_mean"] = round(
                sum(self.recent_vad_ms) / len(self.recent_vad_ms), 3)
        values["window_ms"] = window_ms
        return values

    def publish_diagnostics(self) -> None:
        values = self.diagnostic_values()
        status = DiagnosticStatus(name=f"{self.get_name()}: Omni-Flow", hardware_id="omni_ros")
        status.level, status.message = DiagnosticStatus.OK, "running"
        report = self.last_report
        warnings = []   # every condition that holds is named; the level is the worst one
        if values.get("compute_ms_max", 0.0) > values["window_ms"]:
            warnings.append("units take longer than a window: windows are being "
                            + ("merged" if self.loop.params.overload_policy == "merge"
                               else "skipped"))
        limit = self.settings["input_silence_warn_sec"]
        silent = [name for name, key in (("camera", "camera_silent_sec"),
                                         ("microphone", "mic_silent_sec")) if values[key] > limit]
        if silent:
            warnings.append(f"no input from the {' and '.join(silent)} for "
                            f"{max(values['camera_silent_sec'], values['mic_silent_sec']):.1f} s")
        elif report is not None and report.audio_coverage == 0.0:
            warnings.append("no microphone audio in the last window")
        if warnings:
            status.level, status.message = DiagnosticStatus.WARN, "; ".join(warnings)
        if report is not None and report.error:
            status.level = DiagnosticStatus.ERROR
            status.message = "; ".join([f"unit failed: {report.error}"] + warnings)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def close(self) -> None:
        """Stop the unit worker (it may finish the unit in hand) and the speaker before the node
        is destroyed; both are daemon threads, so a unit stuck in the model cannot hold the
        process beyond these waits."""
        self.stopping.set()
        self.speech_wakeup.set()
        self.worker.join(timeout=5.0)
        self.speaker.join(timeout=2.0)


def main(args=None) -> int:
    return run_node(OmniNode, args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
