"""Every omni_node parameter in one table: name, default, type, range, description, whether it
can change while the node runs. The node declares from this table; the docs are checked against it.

Declaring forgives and explains: an integer given for a double is taken as the double (at start,
from a params file, at run time); a value of the wrong type, out of its range or not one of its
choices stops the node with one line naming the parameter, the value and what is allowed (exit
status 2); a key given for the node that no omni_ros node declares is warned about with the
closest declared name.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from omni_ros.flow.bargein import BargeInDetector
from omni_ros.flow.buffers import WindowBuffer
from omni_ros.flow.echo import make_echo_canceller
from omni_ros.flow.timeline import TickScheduler
from omni_ros.flow.unit_runner import RunnerParams
from omni_ros.flow.units import NS_PER_S
from omni_ros.ros.runner import StartupError
from omni_ros.session.options import MODES


def fields_of(dataclass_type, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings that are fields of `dataclass_type`, by name (what the node passes it)."""
    return {f.name: settings[f.name] for f in dataclasses.fields(dataclass_type) if f.name in settings}


def code_default(owner, name: str) -> Any:
    """The default of `owner`'s keyword argument `name` (a dataclass field, an __init__ or a
    function argument): a parameter that feeds it takes this default, so the two cannot drift."""
    return inspect.signature(owner).parameters[name].default


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    value_range: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[str, ...]] = None
    dynamic: bool = False   # settable while the node runs

    def descriptor(self) -> ParameterDescriptor:
        text = self.description
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        descriptor = ParameterDescriptor(description=text, read_only=not self.dynamic)
        if self.choices:
            descriptor.additional_constraints = f"one of: {', '.join(self.choices)}"
        if self.value_range is not None:
            low, high = self.value_range
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high))]
            elif isinstance(self.default, float):
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                      to_value=float(high))]
        return descriptor


EXECUTOR_PARAMETER = ParameterSpec(
    "executor", "events", "rclpy executor that runs the node's callbacks: events "
    "(rclpy.experimental.EventsExecutor, a C++ event loop: about 40% less executor CPU per "
    "window than single, measured in benchmarks/results/node_overhead.md) or single "
    "(SingleThreadedExecutor). events falls back to single where rclpy lacks it.",
    choices=("events", "single"))


OMNI_NODE_PARAMETERS = (
    # model and backend
    ParameterSpec("model_path", "", "Checkpoint folder: the released MiniCPM-o 4.5 or one written "
                  "by omni_ros_tiny_checkpoint."),
    ParameterSpec("backend", "torch", "Execution backend plugin: torch, onnxruntime, tensorrt "
                  "or one a package registers under the entry-point group omni_ros.backends."),
    ParameterSpec("engine_dir", "", "Folder of exported graphs / built engines for the "
                  "onnxruntime and tensorrt backends (written by omni_ros_build_engines); empty: "
                  "<model_path>/engines/<backend>."),
    ParameterSpec("device", "cpu", "Torch device for the model, e.g. cpu, cuda, cuda:1."),
    ParameterSpec("dtype", "float32", "Weight and activation dtype.",
                  choices=("float32", "bfloat16", "float16")),
    ParameterSpec("seed", 0, "Seed of the session's sampling generator.", (0, 2**31 - 1)),
    ParameterSpec("autostart", True, "Configure (load the model) and activate (take input, "
                  "publish) at start. false: the node waits in the unconfigured lifecycle state "
                  "for configure and activate through its lifecycle services."),
    # conversation
    ParameterSpec("system_prompt", "Streaming Omni Conversation.",
                  "System prompt placed before the first unit. A change takes effect at the next "
                  "unit: the context is rebuilt under it, keeping the recent units.",
                  dynamic=True),
    ParameterSpec("standing_instruction", "", "What the robot should watch for and warn about: "
                  "placed in the system prompt and carried in every proactive alert. A change takes "
                  "effect at the next unit: the context is rebuilt under the new prompt, keeping "
                  "the recent units (max_context_units), and the rebuild is logged with its cost.",
                  dynamic=True),
    ParameterSpec("force_listen_count", 3, "Units the model must listen for after a reset.",
                  (0, 1000), dynamic=True),
    ParameterSpec("mode", "duplex", "duplex: full duplex, one listen/speak decision per window; "
                  "turn_based: the released simplex streaming (the model answers when the "
                  "person's turn ends, 10 text tokens per 25 speech tokens). Switches at the next "
                  "window, without a restart.", choices=MODES, dynamic=True),
    ParameterSpec("listen_prob_scale", 1.0, "Multiplier on the <|listen|> logit at the "
                  "listen/speak decision, as the released code applies it.",
                  (0.0, 100.0), dynamic=True),
    ParameterSpec("temperature", 0.7, "LLM sampling temperature.", (0.0, 2.0), dynamic=True),
    ParameterSpec("top_k", 20, "LLM top-k sampling (0 disables).", (0, 1000), dynamic=True),
    ParameterSpec("top_p", 0.8, "LLM nucleus sampling mass.", (0.0, 1.0), dynamic=True),
    ParameterSpec("repetition_penalty", 1.05, "LLM text repetition penalty.", (1.0, 2.0),
                  dynamic=True),
    ParameterSpec("reference_voice", "", "Wav file of the voice the robot speaks with: a few "
                  "seconds of clear speech, any rate, mono or stereo (the waveform stage's speaker "
                  "prompt, and the voice slot of the LLM's system prefix). Empty: the checkpoint's "
                  "default voice (assets/ref_audio/ref_minicpm_signature.wav); a checkpoint without "
                  "one needs this parameter. A new file is read at once (an unreadable one is "
                  "refused): the next turn speaks with it, and the LLM's voice slot takes it at the "
                  "next unit (the context rebuilt, the recent units kept).",
                  dynamic=True),
    ParameterSpec("token2wav_steps", 10, "Euler steps of the waveform stage's flow matching: "
                  "10 as the released modeling code, 5 as the released web demo (about half the "
                  "waveform stage's compute).", (1, 32)),
    ParameterSpec("max_text_tokens_per_unit", 20, "Most text tokens the model emits per "
                  "speaking unit (the chunk end is forced at the last).", (2, 64)),
    ParameterSpec("max_context_units", 24, "Units kept in the LLM context besides the system "
                  "prefix; older units are dropped so memory and time stay flat.", (1, 10000)),
    # the vllm_omni backend (a client of a vLLM-Omni server; read by no other backend)
    ParameterSpec("vllm_omni_url", "ws://127.0.0.1:8000/v1/duplex", "backend vllm_omni: the "
                  "server's full-duplex WebSocket, ws:// or wss:// (/v1/duplex, or "
                  "/v1/realtime?duplex=1)."),
    ParameterSpec("vllm_omni_model", "", "backend vllm_omni: model name sent in the session "
                  "(the server's served model name); empty: the server's own."),
    ParameterSpec("vllm_omni_api_key_file", "", "backend vllm_omni: file holding the server's "
                  "API key (sent as Authorization: Bearer, never logged); empty: none."),
    ParameterSpec("vllm_omni_api_key_env", "", "backend vllm_omni: name of an environment "
                  "variable holding the API key (instead of vllm_omni_api_key_file), e.g. "
                  "VLLM_API_KEY; empty: none."),
    ParameterSpec("vllm_omni_ca_file", "", "backend vllm_omni: CA certificate file (PEM) that "
                  "signed the server's certificate, for wss:// URLs; empty: the system's CAs."),
    ParameterSpec("vllm_omni_connect_timeout_sec", 5.0, "backend vllm_omni: longest wait for "
                  "the connection and the session to open (at start and on reconnecting).",
                  (0.1, 120.0)),
    ParameterSpec("vllm_omni_unit_timeout_sec", 3.0, "backend vllm_omni: longest wait for a "
                  "unit's answer. One that comes after the window has ended makes the flow skip "
                  "or merge the windows that ticked meanwhile (overload_policy); none by this "
                  "time fails the unit.", (0.1, 60.0)),
    ParameterSpec("vllm_omni_image_max_side", 448, "backend vllm_omni: the frame sent with "
                  "each unit is downscaled to this longer side before JPEG coding.", (64, 4096)),
    ParameterSpec("vllm_omni_jpeg_quality", 80, "backend vllm_omni: JPEG quality of the "
                  "frame sent with each unit.", (10, 100)),
    # timing and output
    ParameterSpec("window_sec", code_default(RunnerParams, "window_ns") / NS_PER_S,
                  "Omni-Flow window length; must match omni_flow_clock.",
                  (0.1, 10.0)),
    ParameterSpec("input_grace_ms", 100, "How long after a window's tick its unit starts, so "
                  "the window's last audio samples (still in flight) are in.", (0, 1000)),
    ParameterSpec("speech_chunk_ms", 200, "Duration of each published speech chunk.", (10, 1000)),
    ParameterSpec("max_future_windows", code_default(WindowBuffer, "max_future_windows"),
                  "Input stamped further ahead than this many windows "
                  "is dropped (and counted).", (1, 100)),
    ParameterSpec("speech_threshold", code_default(RunnerParams, "speech_threshold"),
                  "Voice-activity probability above which a window "
                  "counts as the person speaking.", (0.0, 1.0), dynamic=True),
    ParameterSpec("proactive_lookback_windows",
                  code_default(RunnerParams, "proactive_lookback_windows"),
                  "A turn the model starts with no speech heard "
                  "in this many preceding windows is proactive (raises an alert).", (0, 100),
                  dynamic=True),
    ParameterSpec("alert_level", "WARN", "Level of published proactive alerts.",
                  choices=("INFO", "WARN", "ERROR"), dynamic=True),
    ParameterSpec("alert_min_confidence", 0.0, "Proactive alerts whose confidence (the speak "
                  "probability of the turn's first unit) is below this are not published "
                  "(counted as alerts_below_confidence in /diagnostics). 0: every alert.",
                  (0.0, 1.0), dynamic=True),
    ParameterSpec("alert_cooldown_sec", 10.0, "After a published alert, further alerts under "
                  "the same standing instruction are not published for this long, on the node's "
                  "clock (sim time honoured; counted as alerts_in_cooldown). A changed "
                  "standing_instruction starts fresh. 0: no cooldown.", (0.0, 86400.0),
                  dynamic=True),
    ParameterSpec("alert_history", 20, "omni/alerts is transient local: the last this many "
                  "alerts are kept for subscribers that start late or restart (omni_ros_console, "
                  "omni_ros_alert_log).", (1, 1000)),
    # inputs
    ParameterSpec("use_compressed_image", False, "Also subscribe to "
                  "camera/image_raw/compressed (jpeg/png)."),
    ParameterSpec("audio_sample_rate", 16000, "Microphone sample rate until mic/audio_info "
                  "says otherwise.", (8000, 48000)),
    ParameterSpec("audio_channels", 1, "Microphone channels until mic/audio_info says "
                  "otherwise.", (1, 2)),
    ParameterSpec("audio_sample_format", "S16LE", "Microphone sample format until "
                  "mic/audio_info says otherwise.", choices=("S16LE", "F32LE")),
    ParameterSpec("diagnostics_period_sec", 1.0, "Period of /diagnostics publications.",
                  (0.1, 60.0)),
    ParameterSpec("max_image_side", 2048, "Camera frames with a longer side than this are "
                  "downscaled (by an integer stride) before the model sees them.", (64, 16384)),
    ParameterSpec("input_silence_warn_sec", 3.0, "A camera or microphone that has sent nothing "
                  "for this long raises a WARN diagnostic (units keep running).", (0.1, 3600.0)),
    # real time under pressure
    ParameterSpec("overload_policy", code_default(RunnerParams, "overload_policy"),
                  "Windows whose tick came while a unit was still "
                  "running: skip drops them, merge folds their audio into the next unit (both "
                  "counted in /diagnostics).", choices=("skip", "merge"), dynamic=True),
    ParameterSpec("max_merge_windows", code_default(RunnerParams, "max_merge_windows"),
                  "With overload_policy merge, at most this many missed "
                  "windows are folded into one unit (older ones are skipped).", (1, 32),
                  dynamic=True),
    ParameterSpec("max_consecutive_failures",
                  code_default(RunnerParams, "max_consecutive_failures"),
                  "The model session is reset after this many "
                  "failed units in a row (0: never).", (0, 1000), dynamic=True),
    ParameterSpec("alert_max_units", code_default(RunnerParams, "alert_max_units"),
                  "A proactive turn alerts when it ends, or after this "
                  "many speaking units if it is still going.", (1, 1000), dynamic=True),
    ParameterSpec("barge_in", True, "Stop speaking at once when a person starts talking over "
                  "the robot (voice activity on the echo-cancelled microphone, chunk by chunk)."),
    ParameterSpec("barge_in_threshold", code_default(BargeInDetector, "threshold"),
                  "silero-vad probability above which a 32 ms mic "
                  "frame counts as the person speaking (barge-in); the VAD scores only frames the "
                  "residual-echo gate lets through.", (0.0, 1.0), dynamic=True),
    ParameterSpec("barge_in_min_speech_ms", code_default(BargeInDetector, "min_speech_ms"),
                  "Consecutive speech needed for a barge-in; "
                  "speech output waits while a shorter run of speech frames is being decided.",
                  (32, 2000), dynamic=True),
    ParameterSpec("barge_in_vad_gain_db", code_default(BargeInDetector, "vad_gain_db"),
                  "Gain on what silero-vad hears for barge-in: silero scores a quiet voice "
                  "(a person a few metres away at a mic set for the robot's own loud echo) as "
                  "speech later than a loud one; higher stops the robot sooner for quiet "
                  "persons at more risk of the robot's own residual scoring as speech.",
                  (-20.0, 40.0), dynamic=True),
    ParameterSpec("barge_in_record_path", "",
                  "Record everything the barge-in detector is given (mic, the robot's speech as "
                  "played, resets, settings) and its decisions to this file (written anew at each "
                  "configure), or to a new barge_in_<date>_<time>_<pid>.obr in this folder (an "
                  "existing one, or a path ending in /), for "
                  "omni_ros_barge_in_replay to replay offline decision for decision, with these "
                  "or other settings; empty: off. 65 KB per second of mic audio, as much again while "
                  "the robot speaks (256 MB: about an hour)."),
    ParameterSpec("barge_in_record_max_mb", 256.0,
                  "The barge-in recording stops (a WARN diagnostic says so) once it holds this "
                  "many MB; the node runs on.", (0.1, 1.0e6)),
    ParameterSpec("echo_canceller", code_default(make_echo_canceller, "kind"),
                  "Echo canceller removing the robot's own speech "
                  "from the mic before barge-in detection: fdaf (built in: a linear two-filter "
                  "canceller whose output keeps the person at full level), webrtc (WebRTC AEC3 "
                  "from aec-audio-processing; its echo suppressor also attenuates a person "
                  "talking over a loud echo), auto (fdaf), none.",
                  choices=("auto", "webrtc", "fdaf", "none")),
    ParameterSpec("echo_delay_ms", code_default(BargeInDetector, "echo_delay_ms"),
                  "Bulk delay from publishing speech to hearing it in "
                  "the mic (speaker latency); the fdaf canceller models the echo from 32 ms "
                  "before it to 256 ms after it.",
                  (0.0, 2000.0)),
    ParameterSpec("residual_echo_gate_db", code_default(BargeInDetector, "residual_gate_db"),
                  "A mic frame goes to the VAD only if, in at "
                  "least two of its frequency bands, its residual after echo cancelling stands "
                  "this many dB above the residual echo the canceller leaves there (the 90th "
                  "percentile of the robot's own frames, learnt as it speaks); lower lets "
                  "quieter voices through, higher keeps more of the robot's own residual out.",
                  (-30.0, 30.0)),
    EXECUTOR_PARAMETER,
)


def _type_name(value: Any) -> str:
    return {bool: "a bool", int: "an integer", float: "a double", str: "a string"}.get(
        type(value), type(value).__name__)


def allowed(spec: ParameterSpec) -> str:
    """What the parameter takes, in words."""
    text = _type_name(spec.default)
    if spec.choices:
        return f"{text}, one of: {', '.join(spec.choices)}"
    if spec.value_range is not None and not isinstance(spec.default, bool):
        return f"{text} in [{spec.value_range[0]}, {spec.value_range[1]}]"
    return text


def coerce(spec: ParameterSpec, value: Any) -> Any:
    """The value as the parameter's type where that loses nothing: an integer for a double."""
    if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_value(spec: ParameterSpec, value: Any) -> Optional[str]:
    """A one-line reason the value is refused (type, range, choices), or None."""
    value = coerce(spec, value)
    wrong = f"{spec.name}: {value!r} refused; it takes {allowed(spec)}"
    if type(value) is not type(spec.default):
        return wrong
    if spec.choices and value not in spec.choices:
        return wrong
    if spec.value_range is not None and not isinstance(value, (bool, str)) \
            and not spec.value_range[0] <= value <= spec.value_range[1]:
        return wrong
    return None


def coerce_parameters(specs_by_name: Mapping[str, ParameterSpec], parameters):
    """Run-time changes with integers given for doubles made doubles (a pre-set callback)."""
    out = []
    for p in parameters:
        spec = specs_by_name.get(p.name)
        value = coerce(spec, p.value) if spec is not None else p.value
        out.append(p if value is p.value else Parameter(p.name, value=value))
    return out


def declare_all(node, specs=OMNI_NODE_PARAMETERS) -> dict:
    """Declare every spec on the node (see the module doc); return {name: value}. Raises
    StartupError for a value it cannot take."""
    overrides = node._parameter_overrides          # what the command line and params files gave
    for spec in specs:
        given = overrides.get(spec.name)
        if given is not None:
            reason = check_value(spec, given.value)
            if reason:
                raise StartupError(reason)
            overrides[spec.name] = Parameter(spec.name, value=coerce(spec, given.value))
        node.declare_parameter(spec.name, spec.default, spec.descriptor())
    warn_unknown(node, overrides)
    by_name = {spec.name: spec for spec in specs}
    node.add_pre_set_parameters_callback(lambda params: coerce_parameters(by_name, params))
    return {spec.name: node.get_parameter(spec.name).value for spec in specs}


def warn_unknown(node, overrides: Mapping[str, Any]) -> None:
    """Warn about each given key that no omni_ros node declares, naming the closest one."""
    known = {spec.name for specs in NODE_PARAMETERS.values() for spec in specs} | set(RCLPY_PARAMETERS)
    for name in sorted(set(overrides) - known):
        if name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        node.get_logger().warning(f"parameter {name!r} is not a parameter of any omni_ros node "
                                  f"and is ignored{hint}")


SPECS_BY_NAME = {spec.name: spec for spec in OMNI_NODE_PARAMETERS}


# -- omni_flow_clock ---------------------------------------------------------------------------
CLOCK_NODE_PARAMETERS = (
    ParameterSpec("window_sec", code_default(TickScheduler, "window_ns") / NS_PER_S,
                  "Length of one Omni-Flow window (unit) in seconds, on the "
                  "ROS clock; omni_node must use the same.", (0.1, 10.0)),
    ParameterSpec("poll_period_sec", 0.01, "How often the ROS clock is read (steady time); "
                  "bounds the latency of a tick.", (0.001, 0.1)),
    EXECUTOR_PARAMETER,
)

# Every node's table, by node name (the parameter reference renders them in this order).
NODE_PARAMETERS = {
    "omni_flow_clock": CLOCK_NODE_PARAMETERS,
    "omni_node": OMNI_NODE_PARAMETERS,
}

# Declared by rclpy itself on every node, not by omni_ros.
RCLPY_PARAMETERS = ("use_sim_time", "start_type_description_service")


def descriptor_fields(descriptor: ParameterDescriptor) -> dict:
    """What a declaration says about a parameter, in comparable form (for the docs and tests)."""
    fields = {"description": descriptor.description, "read_only": bool(descriptor.read_only),
              "range": None}
    if descriptor.integer_range:
        r = descriptor.integer_range[0]
        fields["range"] = (int(r.from_value), int(r.to_value))
    elif descriptor.floating_point_range:
        r = descriptor.floating_point_range[0]
        fields["range"] = (float(r.from_value), float(r.to_value))
    return fields
