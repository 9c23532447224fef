"""The LLM context of a session: its cache, where the next position is, and which cache spans are
kept units.

Context policy (both protocols): the cache keeps the system prefix (prompt + standing instruction
+ reference voice) and the most recent `max_context_units` units; older unit spans are cut out and
the keys after them re-rotated (`Compute.llm_drop_span`), so memory and per-unit time stay flat
over hours.

Each kept unit also keeps what it fed (token ids, and the embeddings of its audio and image spans,
references to tensors the unit computed anyway), so that a new system prefix (a changed standing
instruction, prompt or reference voice) can be put under the kept units at once: `take_units`
then `replay` after the new prefix, one LLM call per unit, without the sensors or the encoders.
These records are dropped with their spans: bounded by `max_context_units` like the cache.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, List, Optional, Tuple, Union

import torch

from .compute import Compute, SequenceCache

# What one unit fed, in order: token id lists and embedding spans [n, D].
UnitRecord = List[Union[List[int], torch.Tensor]]


class LLMContext:
    """Feeds token ids and embeddings to the backend's LLM and keeps the cache they build."""

    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        # None: logits come from the backend's LLM graph. Tests set a scripted double of the
        # output head here (hidden [D] -> logits [V]).
        self.head: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        # When a list, every fed token id (int) and embedding span (("embeds", n)) is appended.
        self.trace: Optional[list] = None
        self.reset()

    def reset(self) -> None:
        self.cache: Optional[SequenceCache] = None
        self.position = 0                                     # next position == cache length
        self.prefix_len = 0
        self.unit_spans: Deque[Tuple[int, int]] = deque()     # cache spans of the kept units
        self.unit_records: Deque[UnitRecord] = deque()       # what each kept unit fed
        self._unit_start = 0
        self._unit_feeds: Optional[UnitRecord] = None         # a list while a unit runs

    @property
    def started(self) -> bool:
        return self.cache is not None

    @property
    def length(self) -> int:
        return 0 if self.cache is None else int(self.cache.get_seq_length())

    def ids(self, text: str) -> List[int]:
        return self.compute.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self) -> None:
        """An empty cache, for the system prefix."""
        self.reset()
        self.cache = self.compute.new_llm_cache()

    def end_prefix(self) -> None:
        self.prefix_len = self.position

    def feed_ids(self, ids: List[int], need_logits: bool = True):
        if self.trace is not None:
            self.trace.extend(int(i) for i in ids)
        if self._unit_feeds is not None:
            self._unit_feeds.append([int(i) for i in ids])
        return self._step(self.compute.embed_tokens(ids), need_logits)

    def feed_text(self, text: str, need_logits: bool = False):
        return self.feed_ids(self.ids(text), need_logits)

    def feed(self, embeds: torch.Tensor, need_logits: bool = True):
        """Append embeds [n, D]; returns (hidden [n, D] after the final norm, logits [V] or None)."""
        if self.trace is not None:
            self.trace.append(("embeds", int(embeds.shape[0])))
        if self._unit_feeds is not None:
            self._unit_feeds.append(embeds)
        return self._step(embeds, need_logits)

    def _step(self, embeds: torch.Tensor, need_logits: bool):
        hidden, logits = self.compute.llm_step(embeds, self.position, self.cache,
                                               need_logits=need_logits and self.head is None)
        self.position += embeds.shape[0]
        if need_logits and self.head is not None:
            logits = self.head(hidden[-1]).float()
        return hidden, logits

    # --- units ---
    def begin_unit(self) -> None:
        self._unit_start = self.position
        self._unit_feeds = []

    def end_unit(self, max_units: int) -> None:
        """Record the unit's span (if it fed anything) and drop the oldest beyond `max_units`."""
        if self.position > self._unit_start:
            self.unit_spans.append((self._unit_start, self.position))
            self.unit_records.append(self._unit_feeds or [])
        self._unit_feeds = None
        while len(self.unit_spans) > max(1, max_units):
            self.drop_oldest_unit()

    def take_units(self) -> List[UnitRecord]:
        """The kept units' records, oldest first (for `replay` after a new prefix)."""
        return list(self.unit_records)

    def replay(self, records: List[UnitRecord]) -> int:
        """Feed each unit of `records` again after the prefix, one LLM call a unit (the same keys
        and values as its feeds one by one: causal attention), and keep it as a unit. Returns the
        number of positions fed."""
        fed = 0
        for record in records:
            if not record:
                continue
            self.begin_unit()
            parts = [self.compute.embed_tokens(p) if isinstance(p, list) else p for p in record]
            if self.trace is not None:
                for p in record:
                    if isinstance(p, list):
                        self.trace.extend(p)
                    else:
                        self.trace.append(("embeds", int(p.shape[0])))
            embeds = torch.cat([p.to(parts[0].dtype) for p in parts], dim=0)
            self._step(embeds, need_logits=False)
            fed += int(embeds.shape[0])
            self.unit_spans.append((self._unit_start, self.position))
            self.unit_records.append(record)
            self._unit_feeds = None
        return fed

    def drop_oldest_unit(self) -> None:
        self.unit_records.popleft()
        start, end = self.unit_spans.popleft()
        delta = end - start
        # keys after the span move back by delta positions: rotated by -delta (RoPE composes)
        self.compute.llm_drop_span(self.cache, start, end)
        self.unit_spans = deque((s - delta, e - delta) for s, e in self.unit_spans)
        self.position -= delta
