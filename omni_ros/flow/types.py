"""The contract between the Omni-Flow side and a model session, and the data passed across it.

No ROS and no torch here: the flow side hands a `UnitInput` to a `DuplexSession` and gets a
`UnitOutput` back.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, FrozenSet, Mapping, Optional

import numpy as np

INPUT_SAMPLE_RATE = 16000   # what the audio encoder takes: float32 mono 16 kHz
OUTPUT_SAMPLE_RATE = 24000  # what token2wav produces: float32 mono 24 kHz


@dataclass(frozen=True)
class UnitInput:
    """Everything the model sees for one window."""

    window_index: int
    epoch: int
    start_ns: int
    end_ns: int
    # Newest camera frame of the window as HxWx3 uint8 RGB, or None if no frame arrived.
    image: Optional[np.ndarray]
    image_stamp_ns: Optional[int]
    # The window's audio, float32 mono at INPUT_SAMPLE_RATE, exactly one window long
    # (silence where nothing arrived).
    audio: np.ndarray
    # Fraction of the window covered by received audio samples (0..1).
    audio_coverage: float = 1.0


@dataclass(frozen=True)
class ContextRebuild:
    """The session put a new system prefix under the units it kept (a changed standing
    instruction, prompt or voice took effect without forgetting the conversation)."""

    reason: str            # the option(s) that changed, e.g. "standing_instruction"
    units: int             # kept units fed again after the new prefix
    tokens: int            # positions fed: the new prefix and the kept units
    ms: float              # wall time of the rebuild (part of the unit's compute time)


@dataclass
class UnitOutput:
    """What the model produced for one window."""

    is_listen: bool
    text: str = ""
    # float32 mono at OUTPUT_SAMPLE_RATE; exactly one window of samples when speaking,
    # empty when listening.
    speech: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    end_of_turn: bool = False
    # Probability the model gave to speaking at the decision token (0..1).
    speak_probability: float = 0.0
    # Set on the unit that began by rebuilding the context under a new system prefix.
    context_rebuild: Optional[ContextRebuild] = None


@dataclass(frozen=True)
class SessionCapabilities:
    """What a session takes, declared once at construction."""

    # INPUT_SAMPLE_RATE samples per unit: one window (the runner checks it against its buffer)
    window_samples: int
    # True: a unit may carry several windows' audio back to back (the overload policy "merge");
    # False: the runner folds them into one window's length first.
    accepts_merged_audio: bool = False


class DuplexSession(abc.ABC):
    """A stateful model session run one window (unit) at a time: the contract between the
    Omni-Flow side (omni_ros.flow.unit_runner, the engine) and a model (omni_ros.session). The turn
    inside the model (what the model has said, whether its turn is open) is the session's; the
    flow side sees it only through each UnitOutput."""

    capabilities: SessionCapabilities
    # The option names `apply_options` takes (the node's run-time parameters of the same names).
    option_names: FrozenSet[str] = frozenset()

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the conversation: caches, turn state and unit count."""

    @abc.abstractmethod
    def run_unit(self, unit: UnitInput) -> UnitOutput:
        """Take in one window and decide listen or speak."""

    def interrupt(self) -> bool:
        """The person spoke over the robot (barge-in): close the model's turn now, keeping the
        context. Whether a turn was open. A session without a turn of its own has nothing to close."""
        return False

    def warmup(self) -> None:
        """Pay lazy initialisation before the first real window: one silent unit, then a reset.
        Sessions with more paths (speaking) cover them too."""
        self.run_unit(UnitInput(window_index=0, epoch=0, start_ns=0, end_ns=0,
                                image=np.zeros((64, 64, 3), dtype=np.uint8), image_stamp_ns=0,
                                audio=np.zeros(self.capabilities.window_samples, dtype=np.float32)))
        self.reset()

    def apply_options(self, changes: Mapping[str, Any]) -> None:
        """Change options while running: all of `changes` or none (ValueError with the reason).
        Not called while a unit runs."""
        unknown = sorted(set(changes) - set(self.option_names))
        if unknown:
            raise ValueError(f"not options of this session: {', '.join(unknown)}")

    def diagnostic_values(self) -> Mapping[str, Any]:
        """Values of the session's own for /diagnostics (a remote session's round-trip times,
        say); merged into the flow's. Sessions without any return none."""
        return {}

    def close(self) -> None:
        """Release what the session holds outside this process (a server session); the node
        calls it when it cleans up or shuts down. Local sessions hold nothing of the kind."""
