"""Caches of the explicit-KV graphs, and the rotation that moves cached keys."""
from __future__ import annotations

from typing import Tuple

import torch

from . import graphs as G


class StackedKV:
    """Keys and values of every layer as two tensors [L, 1, H, T, Dh] (explicit-KV backends)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    @classmethod
    def empty(cls, shape, dtype=torch.float32, device="cpu") -> "StackedKV":
        """No positions yet: `shape` with its length axis (3) at 0."""
        return cls(torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device))

    def get_seq_length(self) -> int:
        return int(self.keys.shape[3])

    def drop_span(self, start: int, end: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        k, v = self.keys, self.values
        tail = k[:, :, :, end:].float()
        tail = (tail * cos.to(tail.device) + G.rotate_half(tail) * sin.to(tail.device)).to(k.dtype)
        self.keys = torch.cat([k[:, :, :, :start], tail], dim=3)
        self.values = torch.cat([v[:, :, :, :start], v[:, :, :, end:]], dim=3)


def rope_delta(config, delta: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [Dh] that rotate LLM keys back by `delta` positions."""
    return G.rope_rotation(config.head_dim, float(config.rope_theta), -delta)
