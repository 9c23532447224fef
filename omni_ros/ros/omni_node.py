"""omni_node: the model node. Camera and microphone in, one duplex unit per Omni-Flow window,
speech, text, state, proactive alerts and diagnostics out.

A thin shell: the flow's machinery (window buffer, unit worker, speech pacing, barge-in) is
omni_ros.flow.engine's, message handling omni_ros.ros.sensor_inputs', the model a session from a
backend plugin (omni_ros.runtime.registry). This file wires them to ROS.
"""
from __future__ import annotations

import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from omni_ros.flow.alert_policy import PUBLISH, AlertPolicy
from omni_ros.flow.audio import AudioInputStream
from omni_ros.flow.engine import EngineParams, FlowEngine
from omni_ros.flow.types import OUTPUT_SAMPLE_RATE
from omni_ros.flow.unit_runner import INTERRUPTED, SPEAKING, RunnerParams, UnitReport
from omni_ros.flow.units import NS_PER_S, seconds_to_ns
from omni_ros.flow.vad import VoiceActivity
from omni_ros.msg import BargeIn, DuplexState, FlowTick, OmniText, ProactiveAlert
from omni_ros.ros import audio_flavours, qos
from omni_ros.ros.conversions import ns_to_stamp, stamp_to_ns
from omni_ros.ros.parameters import SPECS_BY_NAME, check_value, declare_all, fields_of
from omni_ros.ros.diagnostics import NodeHealth
from omni_ros.ros.memory import release_memory
from omni_ros.ros.node_parts import barge_in_from, session_from
from omni_ros.ros.runner import StartupError, freeze_startup_objects, node_main, resolved_topics
from omni_ros.ros.sensor_inputs import LOG_THROTTLE_SEC, CameraInput, MicInput, ThrottledLog

CLOCK_AGREEMENT_NS = 60 * NS_PER_S   # a first tick further from this node's clock: another time base
ALERT_LEVELS = {"INFO": ProactiveAlert.INFO, "WARN": ProactiveAlert.WARN, "ERROR": ProactiveAlert.ERROR}


class OmniNode(LifecycleNode):
    """A managed (lifecycle) node: configure loads the model, activate takes input and publishes,
    deactivate stops taking input and drops pending speech, cleanup frees the model. With
    `autostart` (the default) it configures and activates itself at start."""

    def __init__(self, **kwargs) -> None:
        super().__init__("omni_node", **kwargs)
        self.settings = declare_all(self)
        self.window_ns = seconds_to_ns(self.settings["window_sec"])
        self.counters = {"ticks_received": 0, "ticks_wrong_window": 0, "ticks_before_clock": 0,
                         "executor_errors": 0}
        self.log = ThrottledLog(self.get_logger())
        self.health = NodeHealth()
        self.session = self.engine = self.camera = self.mic = None
        self.setters: dict = {}
        self._pubs: dict = {}
        self._inputs: list = []          # subscriptions, while active
        self._configured: list = []      # service and timer, while configured
        self._failure = ""
        self.alert_policy = AlertPolicy(instruction=self.settings["standing_instruction"])
        self._follow_alert_settings()
        self.add_on_set_parameters_callback(self.on_set_parameters)
        self._autostarting = bool(self.settings["autostart"])
        if self._autostarting:   # a failure is the startup error's one line, not logged twice
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise StartupError(self._failure or "configure failed (see the log above)")
            self.trigger_activate()
            self._autostarting = False
        else:
            self.get_logger().info("waiting in the unconfigured state (autostart is false): "
                                   f"configure and activate through {self.get_fully_qualified_name()}/change_state")

    # -- lifecycle -------------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        s = self.settings
        barge_in = None
        try:
            barge_in = barge_in_from(self.settings, self.get_logger(), self.get_fully_qualified_name())
            self.session = session_from(self.settings)
            started = time.perf_counter()
            self.session.warmup()   # lazy initialisation must not land on a real window
            self.get_logger().info(f"model warmed up in {time.perf_counter() - started:.2f} s")
        except StartupError as error:
            self._failure = str(error)
            if not self._autostarting:
                self.get_logger().error(f"configure failed: {error}")
            if barge_in is not None and barge_in.recorder is not None:
                barge_in.recorder.close()
            self.session = None
            return TransitionCallbackReturn.FAILURE
        self.engine = FlowEngine(
            self.session, self, EngineParams(
                window_ns=self.window_ns, runner=RunnerParams(window_ns=self.window_ns,
                                                              **fields_of(RunnerParams, s)),
                max_future_windows=s["max_future_windows"], speech_chunk_ms=s["speech_chunk_ms"],
                input_grace_ms=s["input_grace_ms"], standing_instruction=s["standing_instruction"]),
            decode_frame=lambda frame: self.camera.decode_frame(frame),
            speech_detector=VoiceActivity(), barge_in=barge_in)
        self.camera = CameraInput(self.engine, self.log, lambda: self.settings["max_image_side"],
                                  self.health.frame_stamps)
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
            self.setters["barge_in_vad_gain_db"] = barge_in.set_vad_gain_db
        # outputs: audio_common_msgs of either flavour (ros-drivers or mgonzs13), see audio_flavours
        topics = {"speech": (audio_flavours.SPEECH_TYPE, "speech/audio", qos.SPEECH),
                  "speech_stamped": (audio_flavours.SPEECH_STAMPED_TYPE, "speech/audio_stamped", qos.SPEECH),
                  "speech_info": (audio_flavours.AudioInfo, "speech/audio_info", qos.AUDIO_INFO),
                  "text": (OmniText, "omni/text", qos.OUTPUT), "state": (DuplexState, "omni/state", qos.OUTPUT),
                  "alerts": (ProactiveAlert, "omni/alerts", qos.alerts(s["alert_history"])),
                  "barge_in": (BargeIn, "omni/barge_in", qos.OUTPUT),
                  "diagnostics": (DiagnosticArray, "/diagnostics", qos.OUTPUT)}
        self._pubs = {key: self.create_publisher(*args) for key, args in topics.items()}
        self._pubs["speech_info"].publish(audio_flavours.speech_info(
            OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE * s["speech_chunk_ms"] // 1000))
        self.get_logger().info(audio_flavours.describe())
        self._configured = [
            self.create_service(Trigger, "omni/reset", self.on_reset),
            self.create_timer(s["diagnostics_period_sec"], self.publish_diagnostics,
                              clock=Clock(clock_type=ClockType.STEADY_TIME))]
        freeze_startup_objects()     # the model lives until cleanup: out of the collector's walks
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Inputs subscribed (one executor thread: callbacks here are short, the model runs on
        the engine's worker; raw frames: the header is read from the bytes, the pixels only when
        used), the engine's worker and speaker started."""
        s, qos_ = self.settings, qos
        inputs = [(Image, "camera/image_raw", self.camera.on_image, qos_.CAMERA, {"raw": True}),
                  (audio_flavours.MIC_TYPE, "mic/audio_stamped", self.mic.on_audio, qos_.MIC_AUDIO, {}),
                  (FlowTick, "omni_flow/tick", self.on_tick, qos_.TICK, {})]
        if s["use_compressed_image"]:
            inputs.append((CompressedImage, "camera/image_raw/compressed", self.camera.on_image,
                           qos_.CAMERA, {}))
        if audio_flavours.MIC_INFO_TYPE is not None:   # mgonzs13: the format is in each message
            inputs.append((audio_flavours.MIC_INFO_TYPE, "mic/audio_info", self.mic.on_audio_info,
                           qos_.AUDIO_INFO, {}))
        self._inputs = [self.create_subscription(t, name, cb, q, **kw) for t, name, cb, q, kw in inputs]
        self.engine.start()
        self.get_logger().info(f"ready: backend={s['backend']} model={s['model_path']} "
                               f"window={s['window_sec']:.3f}s speech_chunk={s['speech_chunk_ms']}ms; "
                               f"{resolved_topics(self)}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        dropped = self.engine.stop()
        self.get_logger().info(f"inactive: input no longer taken, {dropped} pending speech chunks dropped")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """The model and everything built on it released, and the memory handed back."""
        for entity in self._configured:
            (self.destroy_service if hasattr(entity, "srv_type") else self.destroy_timer)(entity)
        for publisher in self._pubs.values():
            self.destroy_publisher(publisher)
        self._configured, self._pubs, self.setters = [], {}, {}
        self._end_recording()
        if self.session is not None:
            self.session.close()
        self.session = self.engine = self.camera = self.mic = None
        release_memory()
        self.get_logger().info("cleaned up: the model is released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        if self._inputs:
            self.on_deactivate(state)
        if self.engine is not None:
            self.engine.stop()
        self._end_recording()
        return TransitionCallbackReturn.SUCCESS

    # -- ROS inputs ------------------------------------------------------------------------------
    def on_tick(self, tick: FlowTick) -> None:
        self.counters["ticks_received"] += 1
        length_ns = stamp_to_ns(tick.end) - stamp_to_ns(tick.start)
        if length_ns != self.window_ns:
            self.counters["ticks_wrong_window"] += 1
            raise StartupError(f"omni_flow_clock announces {length_ns / NS_PER_S:.3f} s windows but "
                               f"this node's window_sec is {self.window_ns / NS_PER_S:.3f} s: start "
                               f"both with the same window_sec")
        now_ns = self.get_clock().now().nanoseconds
        if now_ns == 0:
            # use_sim_time and no /clock message yet (the clock node's rule too): this node's
            # clock reads zero, so it can neither judge the tick's time base nor stamp its
            # window; the tick is dropped (counted) and the first tick after /clock is compared.
            self.counters["ticks_before_clock"] += 1
            return
        offset_ns = abs(now_ns - stamp_to_ns(tick.end))
        first = self.counters["ticks_received"] - self.counters["ticks_before_clock"] == 1
        if first and offset_ns > CLOCK_AGREEMENT_NS:
            raise StartupError(f"omni_flow_clock's ticks are {offset_ns / NS_PER_S:.0f} s away from "
                               f"this node's clock: start both with the same use_sim_time "
                               f"(use_sim_time is {self.get_parameter('use_sim_time').value} here)")
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
        options = {k: v for k, v in changes.items() if self.session is not None
                   and k in self.session.option_names}
        if options:
            try:
                self.engine.apply_session_options(options)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        for name, value in changes.items():
            old, self.settings[name] = self.settings[name], value
            if name in self.setters:
                self.setters[name](value)
            if old != value:
                self.get_logger().info(f"parameter {name}: {old!r} -> {value!r}")
        self._follow_alert_settings()
        return SetParametersResult(successful=True)

    def on_executor_error(self, error: Exception) -> None:
        """A message that rclpy could not take, or a callback that raised (see runner.py)."""
        self.counters["executor_errors"] += 1

    # -- engine outputs (worker and speaker threads) ---------------------------------------------
    def running(self) -> bool:
        return self.context.ok()

    def log_error(self, text: str) -> None:
        self.get_logger().error(text, throttle_duration_sec=LOG_THROTTLE_SEC)

    def log_info(self, text: str) -> None:
        self.get_logger().info(text, throttle_duration_sec=LOG_THROTTLE_SEC)

    def publish_report(self, report: UnitReport) -> None:
        state = DuplexState(window_index=report.window_index, end_of_turn=report.end_of_turn,
                            proactive=report.proactive, mode=self.settings["mode"],
                            speak_probability=float(report.speak_probability),
                            compute_ms=float(report.compute_ms))
        state.header.stamp = self.get_clock().now().to_msg()
        state.state = {SPEAKING: DuplexState.SPEAKING, INTERRUPTED: DuplexState.INTERRUPTED}.get(
            report.state, DuplexState.LISTENING)
        self._pubs["state"].publish(state)
        if report.text or (report.state == SPEAKING and report.end_of_turn):
            self._pubs["text"].publish(OmniText(header=state.header, window_index=report.window_index,
                                                      text=report.text, end_of_turn=report.end_of_turn))

    def _follow_alert_settings(self) -> None:
        """The alert policy takes the alert_* parameters and the standing instruction in force."""
        s = self.settings
        self.alert_policy.configure(s["alert_min_confidence"], s["alert_cooldown_sec"])
        self.alert_policy.instruction_in_force(s["standing_instruction"])

    def publish_alert(self, found, window_index: int) -> None:
        """An alert the unit runner raised, published if the alert policy lets it through
        (alert_min_confidence, alert_cooldown_sec on this node's clock; counted either way)."""
        now = self.get_clock().now()
        if self.alert_policy.decide(found.instruction, float(found.confidence),
                                    now.nanoseconds) != PUBLISH:
            return
        alert = ProactiveAlert(window_index=int(window_index), text=found.text,
                               instruction=found.instruction, confidence=float(found.confidence),
                               level=ALERT_LEVELS[self.settings["alert_level"]])
        alert.header.stamp = now.to_msg()
        if found.evidence_stamp_ns is not None:
            alert.evidence_stamp = ns_to_stamp(found.evidence_stamp_ns)
        self._pubs["alerts"].publish(alert)

    def publish_barge_in(self, onset_ns: int, window_index: int, dropped: int) -> None:
        message = BargeIn(window_index=int(window_index), speech_chunks_dropped=int(dropped))
        message.header.stamp = ns_to_stamp(onset_ns)
        self._pubs["barge_in"].publish(message)

    def publish_speech(self, chunk) -> int:
        audio, stamped = audio_flavours.speech_messages(chunk.data_bytes, OUTPUT_SAMPLE_RATE)
        stamped.header.stamp = self.get_clock().now().to_msg()
        stamped.header.frame_id = f"window_{chunk.window_index}"
        self._pubs["speech"].publish(audio)
        self._pubs["speech_stamped"].publish(stamped)
        return stamp_to_ns(stamped.header.stamp)

    # -- diagnostics -----------------------------------------------------------------------------
    def publish_diagnostics(self) -> None:
        name, namespace = self.get_fully_qualified_name(), self.get_namespace()
        counters = {**self.counters, **self.alert_policy.counters.snapshot()}
        concerns = self.health.assess(self.camera, self.mic, self.engine, counters,
                                      self.settings["input_silence_warn_sec"])
        array = DiagnosticArray(status=[c.status(name, namespace) for c in concerns])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pubs["diagnostics"].publish(array)

    def close(self) -> None:
        """Stop the engine's threads before the node is destroyed, and close the session."""
        if self.engine is not None:
            self.engine.stop()
        self._end_recording()
        if self.session is not None:
            self.session.close()

    def _end_recording(self) -> None:
        """The barge-in recording, if one is made, closed: all of it on disk."""
        recorder = getattr(self.engine.barge_in, "recorder", None) if self.engine else None
        if recorder is not None:
            with self.engine.barge_lock:
                recorder.close()


def main(args=None) -> int:
    return node_main(OmniNode, args)


if __name__ == "__main__":
    sys.exit(main())
