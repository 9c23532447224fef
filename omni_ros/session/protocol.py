"""What a conversation protocol is to the session (omni_ros.session.session.PROTOCOLS): one class
per mode, holding that mode's turn state over the session's shared parts (context, audio, speech,
sampler)."""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Optional

import torch

from omni_ros.flow.types import UnitInput, UnitOutput

if TYPE_CHECKING:
    from .session import OmniSession


class ConversationProtocol(abc.ABC):
    name: str

    def __init__(self, session: "OmniSession") -> None:
        self.s = session
        self.reset()

    @abc.abstractmethod
    def reset(self) -> None:
        """This protocol's turn state back to its start."""

    @abc.abstractmethod
    def interrupt(self) -> bool:
        """Close the model's turn (barge-in); whether one was open."""

    @abc.abstractmethod
    def enter(self) -> None:
        """The session switches to this protocol."""

    @abc.abstractmethod
    def leave(self) -> None:
        """The session switches away: close what is open in the context."""

    @abc.abstractmethod
    def prefill(self, prompt: str, voice: Optional[torch.Tensor]) -> None:
        """Feed the system prefix (`voice`: the reference voice's audio embeddings, or None)."""

    @abc.abstractmethod
    def run(self, unit: UnitInput) -> UnitOutput:
        """One unit."""
