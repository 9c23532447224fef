"""omni_node: the model node. Camera and microphone in, one duplex unit per Omni-Flow window,
speech, text, state, proactive alerts and diagnostics out.

A thin shell: the flow's machinery (window buffer, unit worker, speech pacing, barge-in) is
omni_ros.flow.engine's, message handling omni_ros.ros.sensor_inputs', the model a session from a
backend plugin (omni_ros.runtime.registry). This file wires them to ROS.
"""
from __future__ import annotations

import sys
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from omni_ros.flow.audio import AudioInputStream
from omni_ros.flow.bargein import BargeInDetector
from omni_ros.flow.echo import make_echo_canceller
from omni_ros.flow.engine import EngineParams, FlowEngine
from omni_ros.flow.types import OUTPUT_SAMPLE_RATE
from omni_ros.flow.unit_runner import INTERRUPTED, SPEAKING, RunnerParams, UnitReport
from omni_ros.flow.units import NS_PER_S, seconds_to_ns
from omni_ros.flow.vad import VoiceActivity
from omni_ros.msg import DuplexState, FlowTick, OmniText, ProactiveAlert
from omni_ros.ros import audio_flavours, qos
from omni_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from omni_ros.ros.parameters import SPECS_BY_NAME, check_value, declare_all, fields_of
from omni_ros.ros.runner import StartupError, run_node
from omni_ros.ros.sensor_inputs import LOG_THROTTLE_SEC, CameraInput, MicInput, ThrottledLog
from omni_ros.runtime.registry import BackendError, BackendSettings, create_session

ALERT_LEVELS = {"INFO": ProactiveAlert.INFO, "WARN": ProactiveAlert.WARN, "ERROR": ProactiveAlert.ERROR}


class OmniNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("omni_node", **kwargs)
        s = self.settings = declare_all(self)
        self.window_ns = seconds_to_ns(s["window_sec"])
        self.session = self._create_session()
        started = time.perf_counter()
        self.session.warmup()   # lazy initialisation must not land on a real window
        self.get_logger().info(f"model warmed up in {time.perf_counter() - started:.2f} s")
        self.counters = {"ticks_received": 0, "ticks_wrong_window": 0, "executor_errors": 0}
        self.log = ThrottledLog(self.get_logger())
        self.engine = FlowEngine(
            self.session, self, EngineParams(
                window_ns=self.window_ns, runner=RunnerParams(window_ns=self.window_ns,
                                                              **fields_of(RunnerParams, s)),
                max_future_windows=s["max_future_windows"], speech_chunk_ms=s["speech_chunk_ms"],
                input_grace_ms=s["input_grace_ms"], standing_instruction=s["standing_instruction"]),
            decode_frame=lambda frame: self.camera.decode_frame(frame),
            speech_detector=VoiceActivity(), barge_in=self._create_barge_in())
        self.camera = CameraInput(self.engine, self.log, lambda: self.settings["max_image_side"])
        self.mic = MicInput(self.engine, self.log, AudioInputStream(
            s["audio_sample_rate"], s["audio_channels"], s["audio_sample_format"]))
        runner, barge_in = self.engine.runner, self.engine.barge_in
        # run-time parameter -> what it sets (session options go to the session, all or none)
        self.setters = {"standing_instruction": lambda v: setattr(runner, "standing_instruction", v)}
        self.setters.update({name: (lambda v, n=name: setattr(runner.params, n, v))
                             for name in fields_of(RunnerParams, s)})
        if barge_in is not None:
            self.setters["barge_in_threshold"] = lambda v: setattr(barge_in, "threshold", v)
            self.setters["barge_in_min_speech_ms"] = barge_in.set_min_speech_ms

        # outputs: audio_common_msgs of either flavour (ros-drivers or mgonzs13), see audio_flavours
        self.speech_publisher = self.create_publisher(audio_flavours.SPEECH_TYPE, "speech/audio", qos.SPEECH)
        self.speech_stamped_publisher = self.create_publisher(audio_flavours.SPEECH_STAMPED_TYPE,
                                                              "speech/audio_stamped", qos.SPEECH)
        info = self.create_publisher(audio_flavours.AudioInfo, "speech/audio_info", qos.AUDIO_INFO)
        self.text_publisher = self.create_publisher(OmniText, "omni/text", qos.OUTPUT)
        self.state_publisher = self.create_publisher(DuplexState, "omni/state", qos.OUTPUT)
        self.alert_publisher = self.create_publisher(ProactiveAlert, "omni/alerts", qos.OUTPUT)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", qos.OUTPUT)
        info.publish(audio_flavours.speech_info(OUTPUT_SAMPLE_RATE,
                                                OUTPUT_SAMPLE_RATE * s["speech_chunk_ms"] // 1000))
        self.get_logger().info(audio_flavours.describe())

        # inputs (one executor thread: callbacks here are short, the model runs on the engine's
        # worker). Raw frames: the header is read from the bytes, the pixels only when used.
        self.create_subscription(Image, "camera/image_raw", self.camera.on_image, qos.CAMERA, raw=True)
        if s["use_compressed_image"]:
            self.create_subscription(CompressedImage, "camera/image_raw/compressed",
                                     self.camera.on_image, qos.CAMERA)
        self.create_subscription(audio_flavours.MIC_TYPE, "mic/audio_stamped", self.mic.on_audio,
                                 qos.MIC_AUDIO)
        if audio_flavours.MIC_INFO_TYPE is not None:   # mgonzs13: the format is in each message
            self.create_subscription(audio_flavours.MIC_INFO_TYPE, "mic/audio_info",
                                     self.mic.on_audio_info, qos.AUDIO_INFO)
        self.create_subscription(FlowTick, "omni_flow/tick", self.on_tick, qos.TICK)
        self.create_service(Trigger, "omni/reset", self.on_reset)
        self.add_on_set_parameters_callback(self.on_set_parameters)
        self.create_timer(s["diagnostics_period_sec"], self.publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.engine.start()
        self.get_logger().info(f"ready: backend={s['backend']} model={s['model_path']} "
                               f"window={s['window_sec']:.3f}s speech_chunk={s['speech_chunk_ms']}ms")

    # -- start-up ------------------------------------------------------------------------------
    def _create_session(self):
        s = self.settings
        if not s["model_path"]:
            raise StartupError("parameter model_path is empty: point it at a MiniCPM-o 4.5 "
                               "checkpoint folder, or write a tiny one with "
                               "`omni_ros_tiny_checkpoint DIR` and pass -p model_path:=DIR")
        reason = check_value(SPECS_BY_NAME["dtype"], s["dtype"])
        if reason:
            raise StartupError(reason)
        try:
            return create_session(s["backend"], BackendSettings(
                model_path=s["model_path"], device=s["device"], dtype=s["dtype"],
                engine_dir=s["engine_dir"], session_options=dict(s)))
        except (BackendError, ValueError) as error:   # ValueError: a refused option or voice
            raise StartupError(str(error)) from error
        except Exception as error:  # noqa: BLE001 - a corrupt checkpoint must not end in a traceback
            raise StartupError(f"cannot load the model from {s['model_path']!r}: "
                               f"{type(error).__name__}: {error} (is the checkpoint complete "
                               f"and uncorrupted? re-download it, or write a tiny one with "
                               f"`omni_ros_tiny_checkpoint DIR`)") from error

    def _create_barge_in(self):
        s = self.settings
        if not s["barge_in"]:
            return None
        canceller = make_echo_canceller(s["echo_canceller"])
        self.get_logger().info(f"barge-in on: echo canceller {type(canceller).__name__}")
        return BargeInDetector(VoiceActivity(), canceller, threshold=s["barge_in_threshold"],
                               min_speech_ms=s["barge_in_min_speech_ms"],
                               echo_delay_ms=s["echo_delay_ms"],
                               residual_gate_db=s["residual_echo_gate_db"])

    # -- ROS inputs ------------------------------------------------------------------------------
    def on_tick(self, tick: FlowTick) -> None:
        self.counters["ticks_received"] += 1
        length_ns = stamp_to_ns(tick.end) - stamp_to_ns(tick.start)
        if length_ns != self.window_ns:
            self.counters["ticks_wrong_window"] += 1
            self.log.warn("ticks_wrong_window", f"tick window is {length_ns / NS_PER_S:.3f} s but "
                          f"window_sec is {self.window_ns / NS_PER_S:.3f} s: set the same window_sec "
                          f"on omni_flow_clock and omni_node", level="error")
            return
        self.engine.put_tick(tick)

    def on_reset(self, request, response):
        dropped = self.engine.reset()
        response.success = True
        response.message = f"session reset; {dropped} pending speech chunks dropped"
        self.get_logger().info(response.message)
        return response

    def on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if p.name in SPECS_BY_NAME}
        for name, value in changes.items():
            reason = check_value(SPECS_BY_NAME[name], value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        options = {k: v for k, v in changes.items() if k in self.session.option_names}
        if options:
            try:
                self.engine.apply_session_options(options)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        for name, value in changes.items():
            self.settings[name] = value
            if name in self.setters:
                self.setters[name](value)
        if "reference_voice" in changes:
            self.get_logger().info(f"reference voice: {changes['reference_voice'] or 'the checkpoint default'}")
        return SetParametersResult(successful=True)

    def on_executor_error(self, error: Exception) -> None:
        """A message that rclpy could not take, or a callback that raised (see runner.py)."""
        self.counters["executor_errors"] += 1

    # -- engine outputs (worker and speaker threads) ---------------------------------------------
    def running(self) -> bool:
        return self.context.ok()

    def log_error(self, text: str) -> None:
        self.get_logger().error(text, throttle_duration_sec=LOG_THROTTLE_SEC)

    def publish_report(self, report: UnitReport) -> None:
        state = DuplexState()
        state.header.stamp = self.get_clock().now().to_msg()
        state.window_index = report.window_index
        state.state = {SPEAKING: DuplexState.SPEAKING, INTERRUPTED: DuplexState.INTERRUPTED}.get(
            report.state, DuplexState.LISTENING)
        state.end_of_turn = report.end_of_turn
        state.proactive = report.proactive
        state.speak_probability = float(report.speak_probability)
        state.compute_ms = float(report.compute_ms)
        self.state_publisher.publish(state)
        if report.text or (report.state == SPEAKING and report.end_of_turn):
            self.text_publisher.publish(OmniText(header=state.header, window_index=report.window_index,
                                                 text=report.text, end_of_turn=report.end_of_turn))

    def publish_alert(self, found, window_index: int) -> None:
        alert = ProactiveAlert(window_index=int(window_index), text=found.text,
                               instruction=found.instruction, confidence=float(found.confidence),
                               level=ALERT_LEVELS[self.settings["alert_level"]])
        alert.header.stamp = self.get_clock().now().to_msg()
        if found.evidence_stamp_ns is not None:
            alert.evidence_stamp = ns_to_stamp(found.evidence_stamp_ns)
        self.alert_publisher.publish(alert)

    def publish_speech(self, chunk) -> int:
        audio, stamped = audio_flavours.speech_messages(chunk.data_bytes, OUTPUT_SAMPLE_RATE)
        stamped.header.stamp = self.get_clock().now().to_msg()
        stamped.header.frame_id = f"window_{chunk.window_index}"
        self.speech_publisher.publish(audio)
        self.speech_stamped_publisher.publish(stamped)
        return stamp_to_ns(stamped.header.stamp)

    # -- diagnostics -----------------------------------------------------------------------------
    def diagnostic_values(self) -> dict:
        values = {**self.counters, **self.camera.counters, **self.mic.counters}
        values.update({f"audio_{k}": v for k, v in self.mic.stream.counters.snapshot().items()})
        values.update(self.engine.diagnostic_values())
        now = time.monotonic()
        values["camera_silent_sec"] = round(now - self.camera.last_at, 2)
        values["mic_silent_sec"] = round(now - self.mic.last_at, 2)
        return values

    def publish_diagnostics(self) -> None:
        values = self.diagnostic_values()
        status = DiagnosticStatus(name=f"{self.get_name()}: Omni-Flow", hardware_id="omni_ros",
                                  level=DiagnosticStatus.OK, message="running")
        report = self.engine.last_report
        warnings = self.engine.warnings()   # every condition that holds is named
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
        """Stop the engine's threads before the node is destroyed."""
        self.engine.close()


def main(args=None) -> int:
    return run_node(OmniNode, args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
