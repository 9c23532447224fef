"""Every omni_node parameter in one table: name, default, type, range, description, whether it
can change while the node runs. The node declares from this table; the docs are checked against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


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


OMNI_NODE_PARAMETERS = (
    # model and backend
    ParameterSpec("model_path", "", "Checkpoint folder: the released MiniCPM-o 4.5 or one written "
                  "by omni_ros_tiny_checkpoint."),
    ParameterSpec("backend", "torch", "Execution backend plugin (entry-point group "
                  "omni_ros.backends)."),
    ParameterSpec("device", "cpu", "Torch device for the model, e.g. cpu, cuda, cuda:1."),
    ParameterSpec("dtype", "float32", "Weight and activation dtype.",
                  choices=("float32", "bfloat16", "float16")),
    ParameterSpec("seed", 0, "Seed of the session's sampling generator.", (0, 2**31 - 1)),
    # conversation
    ParameterSpec("system_prompt", "Streaming Omni Conversation.",
                  "System prompt placed before the first unit (applies after omni/reset).",
                  dynamic=True),
    ParameterSpec("standing_instruction", "", "What the robot should watch for and warn about: "
                  "placed in the system prompt (the model sees a change after omni/reset) and "
                  "carried in every proactive alert (at once).", dynamic=True),
    ParameterSpec("force_listen_count", 3, "Units the model must listen for after a reset.",
                  (0, 1000), dynamic=True),
    ParameterSpec("listen_prob_scale", 1.0, "Multiplier on the listen probability at the "
                  "listen/speak decision (< 1 makes the model speak more readily).",
                  (0.0, 100.0), dynamic=True),
    ParameterSpec("temperature", 0.7, "LLM sampling temperature.", (0.0, 2.0), dynamic=True),
    ParameterSpec("top_k", 20, "LLM top-k sampling (0 disables).", (0, 1000), dynamic=True),
    ParameterSpec("top_p", 0.8, "LLM nucleus sampling mass.", (0.0, 1.0), dynamic=True),
    ParameterSpec("repetition_penalty", 1.05, "LLM text repetition penalty.", (1.0, 2.0),
                  dynamic=True),
    ParameterSpec("max_text_tokens_per_unit", 20, "Most text tokens the model emits per "
                  "speaking unit (the chunk end is forced at the last).", (2, 64)),
    ParameterSpec("max_context_units", 24, "Units kept in the LLM context besides the system "
                  "prefix; older units are dropped so memory and time stay flat.", (1, 10000)),
    # timing and output
    ParameterSpec("window_sec", 1.0, "Omni-Flow window length; must match omni_flow_clock.",
                  (0.1, 10.0)),
    ParameterSpec("input_grace_ms", 100, "How long after a window's tick its unit starts, so "
                  "the window's last audio samples (still in flight) are in.", (0, 1000)),
    ParameterSpec("speech_chunk_ms", 200, "Duration of each published speech chunk.", (10, 1000)),
    ParameterSpec("max_future_windows", 3, "Input stamped further ahead than this many windows "
                  "is dropped (and counted).", (1, 100)),
    ParameterSpec("speech_threshold", 0.5, "Voice-activity probability above which a window "
                  "counts as the person speaking.", (0.0, 1.0), dynamic=True),
    ParameterSpec("proactive_lookback_windows", 2, "A turn the model starts with no speech heard "
                  "in this many preceding windows is proactive (raises an alert).", (0, 100),
                  dynamic=True),
    ParameterSpec("alert_level", "WARN", "Level of published proactive alerts.",
                  choices=("INFO", "WARN", "ERROR"), dynamic=True),
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
)


def declare_all(node, specs=OMNI_NODE_PARAMETERS) -> dict:
    """Declare every spec on the node; return {name: value}."""
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())
    return {spec.name: node.get_parameter(spec.name).value for spec in specs}


def check_value(spec: ParameterSpec, value: Any) -> Optional[str]:
    """A reason the value is refused, or None (ranges are also enforced by rcl)."""
    if spec.choices and value not in spec.choices:
        return f"{spec.name} must be one of {', '.join(spec.choices)}, got {value!r}"
    return None


SPECS_BY_NAME = {spec.name: spec for spec in OMNI_NODE_PARAMETERS}
