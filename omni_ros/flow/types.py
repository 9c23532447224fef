"""Plain data passed between the Omni-Flow loop and a duplex model session.

No ROS and no torch here: the flow side hands a `UnitInput` to any object that satisfies
`DuplexSession` and gets a `UnitOutput` back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

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


class DuplexSession(Protocol):
    """A stateful model session run one window (unit) at a time."""

    def reset(self) -> None:
        """Forget the conversation: caches, turn state and unit count."""

    def run_unit(self, unit: UnitInput) -> UnitOutput:
        """Take in one window and decide listen or speak."""
