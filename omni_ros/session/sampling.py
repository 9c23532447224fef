"""Sampling, written once for text and speech codes: one generator per session, one filter, one
repetition-penalty rule.

The released stack penalises repetitions three ways; all are `repetition_penalty` with two
switches: the duplex text decoder divides the logits of recently drawn tokens by the penalty
whatever their sign (`sign_aware=False`), the turn-based generator multiplies negative logits
instead (`sign_aware=True`), and the speech decoder raises the penalty to the number of times a
code occurs in its window (`counted=True`).
"""
from __future__ import annotations

from typing import Sequence

import torch


def repetition_penalty(logits: torch.Tensor, previous: Sequence[int], penalty: float, *,
                       sign_aware: bool = True, counted: bool = False) -> torch.Tensor:
    """`logits` [V] with the tokens of `previous` penalised (a new tensor; `logits` when nothing
    changes): each such logit is divided by alpha = penalty ** n, n = 1 (or, `counted`, the
    token's count in `previous`); with `sign_aware`, negative logits are multiplied by alpha
    instead, so the penalty always lowers them."""
    if penalty == 1.0 or not len(previous):
        return logits
    ids = torch.as_tensor(list(previous), dtype=torch.long, device=logits.device)
    ids, count = torch.unique(ids[ids < logits.shape[-1]], return_counts=True)
    exponent = count.to(logits.dtype) if counted else torch.ones_like(ids, dtype=logits.dtype)
    alpha = torch.pow(torch.tensor(float(penalty), dtype=logits.dtype, device=logits.device), exponent)
    vals = logits[ids]
    out = logits.clone()
    out[ids] = torch.where(vals < 0, vals * alpha, vals / alpha) if sign_aware else vals / alpha
    return out


def top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The released filter: keep the top_k logits, then the smallest prefix whose probability
    exceeds top_p (the first token crossing it kept). Returns filtered logits [V]."""
    if top_k and 0 < top_k < logits.shape[-1]:
        vals, order = torch.topk(logits, top_k)                  # sorted, descending
        kth = vals[-1]
        vals = torch.where(logits[order] < kth, torch.full_like(vals, float("-inf")), vals)
    else:
        vals, order = torch.sort(logits, descending=True)
    if top_p and top_p > 0.0:
        cum = torch.cumsum(torch.softmax(vals, dim=-1), dim=-1)
        remove = cum > top_p
        remove[1:] = remove[:-1].clone()
        remove[0] = False
        vals = vals.masked_fill(remove, float("-inf"))
    out = torch.full_like(logits, float("-inf"))
    out[order] = vals
    return out


class Sampler:
    """The session's random draws, reproducible from its seed."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def uniform(self) -> float:
        """One float64 draw in [0, 1)."""
        return float(torch.rand(1, generator=self.generator, dtype=torch.float64))

    def draw(self, probs: torch.Tensor) -> int:
        """One index from `probs` [V] by inverse CDF (the law of torch.multinomial, much faster on
        a 151,748-entry vocabulary); never a zero-probability entry."""
        cdf = torch.cumsum(probs.double(), dim=0)
        u = self.uniform() * float(cdf[-1])
        i = int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64), right=True))
        i = min(i, probs.shape[0] - 1)
        while probs[i] <= 0 and i > 0:
            i -= 1
        return i

    def filtered(self, logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> int:
        """Temperature, top-k, top-p (the released filter), then one draw."""
        logits = logits / max(float(temperature), 1e-5)
        if top_k and 0 < top_k < logits.shape[0]:
            vals, order = torch.topk(logits, top_k)              # only these can survive
            return int(order[self.draw(torch.softmax(top_k_top_p(vals, 0, top_p), dim=-1))])
        return self.draw(torch.softmax(top_k_top_p(logits, 0, top_p), dim=-1))

    def code(self, logits: torch.Tensor) -> int:
        """One speech code from its logits [C] (already tempered): the released speech decoder's
        torch.multinomial draw, so the codes of a seed are the reference's."""
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())
