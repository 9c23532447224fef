"""Streaming speech codes into 24 kHz audio exactly as the released MiniCPM-o 4.5 stack does.

Per reference voice (`set_voice`): the prompt codes, speaker condition and prompt mel are computed once,
and the flow runs once over the prompt (plus three silence codes) to fill its caches. Per turn
(`start_turn`): those caches are restored, the vocoder's are emptied, and the code buffer starts with
three silence codes. Per unit (`push`): while the buffer holds 25 codes + 3 lookahead, the first 28 are
decoded and the first 25 dropped; at a turn's first unit smaller windows are flushed early, and at its
end the rest is decoded as the last chunk. Every decode call:
  flow encoder (codes -> mu) -> `steps` Euler steps of the DiT estimator with classifier-free guidance
  -> mel chunk -> HiFT vocoder over the 8 mel frames kept from the previous call + the chunk -> the
  first 160 ms cross-faded with the previous call's tail, the last 160 ms held back for the next call.
A non-final 28-code call gives exactly 24000 samples. The graphs run through a backend
(`omni_ros.session.compute.WaveformCompute`); this class holds only tensors and the schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from omni_ros.model.token2wav.estimator import CausalConditionalCFM, cosine_time_grid, draw_noise
from omni_ros.model.token2wav.flow import FlowCaches

from .compute import WaveformCompute

SILENCE_CODE = 4218          # the released stage's silence code
START_SILENCE_CODES = 3      # a turn's code buffer starts with three of them
CHUNK_CODES = 25             # new codes per decode call
EARLY_FLUSH_MIN = 5          # at a turn's first unit, windows of >= lookahead + 5 codes are flushed early
MEL_CACHE_FRAMES = 8         # 160 ms of mel kept for the vocoder's next call
SAMPLES_PER_FRAME = 480      # 24 kHz / 50 mel frames per second
OVERLAP_SAMPLES = MEL_CACHE_FRAMES * SAMPLES_PER_FRAME
CACHE_TAIL_FRAMES = 100      # the flow's attention caches keep the prompt + this many frames
WINDOW_SAMPLES = 24000       # one 1 s window at 24 kHz


def trimmed_spans(new: int, old: int, keep_head: int, keep_tail: int) -> List[Tuple[int, int, int, int]]:
    """Where the positions of [new chunk (`new`), old cache (`old`)] that the released trim keeps
    (all of them when they fit in `keep_head + keep_tail`, else the first `keep_head` and the last
    `keep_tail`) come from: (part 0 new / 1 old, start, end, destination start) spans."""
    total = new + old
    kept = [(0, total)] if total <= keep_head + keep_tail else [(0, keep_head), (total - keep_tail, total)]
    spans, dst = [], 0
    for start, end in kept:
        for part, (lo, hi) in enumerate(((0, new), (new, total))):
            a, b = max(start, lo), min(end, hi)
            if a < b:
                spans.append((part, a - lo, b - lo, dst))
                dst += b - a
    return spans


@dataclass
class VoicePrompt:
    """What a reference voice conditions: computed once per voice."""
    codes: torch.Tensor          # [1, N] prompt codes (25/s)
    embedding: torch.Tensor      # [1, 192] CAM++ speaker embedding
    speaker: torch.Tensor        # [1, 80] speaker condition
    mel: torch.Tensor            # [1, 2N, 80] prompt mel (24 kHz front end)
    flow_caches: FlowCaches      # after the prompt + three silence codes

    @property
    def mel_frames(self) -> int:
        return int(self.mel.shape[1])


class WaveformStream:
    """One speaker's streaming waveform stage. Not thread-safe: one session drives it."""

    def __init__(self, compute: WaveformCompute, steps: int = 10, seed: int = 0,
                 chunk_codes: int = CHUNK_CODES, window_samples: int = WINDOW_SAMPLES):
        """`chunk_codes` new codes per decode call and `window_samples` per unit: the released 25 and
        24000 for 1 s windows; other window lengths use their own (e.g. 12 codes for 0.5 s, whose
        calls give 11520 samples, padded to the 12000 of a window)."""
        self.compute = compute
        self.steps = int(steps)
        self.seed = int(seed)
        self.chunk_codes, self.window_samples = int(chunk_codes), int(window_samples)
        self.lookahead = int(compute.t2w_lookahead)
        # drawn once, like the released stage: from the third call on every call reads the same window
        self.noise = draw_noise(torch.Generator().manual_seed(self.seed))
        self.schedule = cosine_time_grid(self.steps)
        self.prompt: Optional[VoicePrompt] = None
        self.calls = 0                       # decode calls since the stream was built (diagnostics)
        self._buffer: List[int] = []
        self._flow: Optional[FlowCaches] = None
        self._generator = torch.Generator()
        self._fade = torch.from_numpy(np.hamming(2 * OVERLAP_SAMPLES))      # float64, as released
        self._empty_vocoder_caches()

    # --- voice and turns ---
    def set_voice(self, voice) -> VoicePrompt:
        """Compute the prompt and the flow caches for `voice` (a `Voice`); starts a new turn."""
        codes, embedding, mel = self.compute.t2w_prompt(voice)
        speaker = self.compute.t2w_speaker(embedding)
        silence = torch.full((1, START_SILENCE_CODES), SILENCE_CODE, dtype=codes.dtype)
        tokens = torch.cat([codes, silence], dim=1)
        empty = self.compute.t2w_empty_flow_caches(self.steps)
        mu, enc_cnn, enc_att = self.compute.t2w_encoder(tokens, False, empty.encoder_cnn, empty.encoder_att)
        if mu.shape[2] != mel.shape[1]:
            raise RuntimeError(f"prompt mel has {mel.shape[1]} frames, the flow gave {mu.shape[2]}")
        _, est_cnn, est_keys, est_values = self._solve(mu, speaker, mel.transpose(1, 2).contiguous(),
                                                       empty.estimator_cnn, empty.estimator_keys,
                                                       empty.estimator_values, keep_head=int(mel.shape[1]))
        self.prompt = VoicePrompt(codes, embedding, speaker, mel,
                                  FlowCaches(enc_cnn, enc_att, est_cnn, est_keys, est_values))
        self.start_turn()
        return self.prompt

    def start_turn(self) -> None:
        """Restore the voice's caches and start the code buffer with three silence codes."""
        if self.prompt is None:
            raise RuntimeError("no reference voice set")
        self._flow = self.prompt.flow_caches.clone()
        self._empty_vocoder_caches()
        self._generator.manual_seed(self.seed)
        self._buffer = [SILENCE_CODE] * START_SILENCE_CODES

    @property
    def pending_codes(self) -> int:
        return len(self._buffer)

    # --- per unit ---
    def push(self, codes: List[int], turn_start: bool, end_of_turn: bool) -> np.ndarray:
        """A unit's codes -> its speech (float32, 24 kHz) as the released stack returns it: at least
        one window unless the turn ends, left-padded with silence when the unit decoded less (early
        flushes); the turn's final flush is appended at `end_of_turn`, after which a new turn starts."""
        look = self.lookahead
        self._buffer += [int(c) for c in codes]
        pieces: List[torch.Tensor] = []
        if turn_start:
            while len(self._buffer) >= look + EARLY_FLUSH_MIN:
                n = min(self.chunk_codes + look, len(self._buffer))
                pieces.append(self._decode(self._buffer[:n], last_chunk=False))
                self._buffer = self._buffer[min(self.chunk_codes, n - look):]
        else:
            while len(self._buffer) >= self.chunk_codes + look:
                pieces.append(self._decode(self._buffer[:self.chunk_codes + look], last_chunk=False))
                self._buffer = self._buffer[self.chunk_codes:]
        if end_of_turn and self._buffer:
            pieces.append(self._decode(self._buffer, last_chunk=True))
            self._buffer = []
        wav = torch.cat(pieces, dim=1)[0].numpy() if pieces else np.zeros(0, np.float32)
        if not end_of_turn and wav.shape[0] < self.window_samples:
            wav = np.pad(wav, (self.window_samples - wav.shape[0], 0))
        if end_of_turn:
            self.start_turn()
        return np.ascontiguousarray(wav, dtype=np.float32)

    # --- one decode call (the released `stream`) ---
    def _decode(self, codes: List[int], last_chunk: bool) -> torch.Tensor:
        mel = self.decode_mel(codes, last_chunk)
        return self.vocode(mel, last_chunk)

    def decode_mel(self, codes: List[int], last_chunk: bool) -> torch.Tensor:
        """codes (with lookahead unless last) -> mel chunk [1, 80, frames]; advances the flow caches."""
        assert self._flow is not None and self.prompt is not None
        c = self._flow
        tokens = torch.tensor([codes], dtype=torch.long)
        mu, c.encoder_cnn, c.encoder_att = self.compute.t2w_encoder(tokens, last_chunk, c.encoder_cnn,
                                                                    c.encoder_att)
        mel, c.estimator_cnn, c.estimator_keys, c.estimator_values = self._solve(
            mu, self.prompt.speaker, torch.zeros_like(mu), c.estimator_cnn, c.estimator_keys, c.estimator_values,
            keep_head=self.prompt.mel_frames)
        c.trim_encoder(self.prompt.mel_frames, CACHE_TAIL_FRAMES)
        self.calls += 1
        return mel

    def _solve(self, mu, speaker, cond, cnn_cache, keys, values, keep_head: int):
        """The Euler solver over `steps` steps; caches [steps, ...] in, new caches [steps, ...] out.
        Each step's new keys and values are this chunk's; they go before the cached ones and the
        result is trimmed as released (`trimmed_spans`), written once into the new cache."""
        offset = int(keys.shape[4])
        frames = int(mu.shape[2])
        x = self.noise[:, :, offset:offset + frames].to(mu.dtype)
        # classifier-free guidance: a batch of [conditioned, unconditioned]
        mu_in, speaker_in, cond_in = CausalConditionalCFM.guidance_inputs(mu, speaker, cond)
        span = self.schedule
        t, dt = span[0:1], span[1] - span[0]
        spans = trimmed_spans(frames, offset, keep_head, CACHE_TAIL_FRAMES)
        shape = list(keys.shape)
        shape[4] = spans[-1][3] + spans[-1][2] - spans[-1][1]
        new_keys, new_values = keys.new_empty(shape), values.new_empty(shape)
        new_cnn = []
        for step in range(1, self.steps + 1):
            s = step - 1
            x, cnn, k, v = self.compute.t2w_estimator_step(x, mu_in, speaker_in, cond_in, t, dt.reshape(1),
                                                           cnn_cache[s], keys[s], values[s])
            for out, parts in ((new_keys, (k, keys[s])), (new_values, (v, values[s]))):
                for part, start, end, dst in spans:
                    out[s, :, :, :, dst:dst + end - start] = parts[part][:, :, :, start:end]
            new_cnn.append(cnn)
            t = t + dt
            if step < self.steps:
                dt = span[step + 1] - t[0]
        return x, torch.stack(new_cnn), new_keys, new_values

    def vocode(self, mel_chunk: torch.Tensor, last_chunk: bool) -> torch.Tensor:
        """mel chunk -> samples [1, n] with the released overlap handling; advances the vocoder caches."""
        mel = torch.cat([self._cache_mel, mel_chunk], dim=2)
        random = self.compute.t2w_vocoder_random(int(mel.shape[2]), self._generator)
        speech, source = self.compute.t2w_vocoder(mel, self._cache_source, *random)
        first = self._cache_speech.shape[-1] == 0
        if not first:
            n = OVERLAP_SAMPLES
            faded = speech[..., :n] * self._fade[:n] + self._cache_speech[..., -n:] * self._fade[n:]
            speech = torch.cat([faded.to(speech.dtype), speech[..., n:]], dim=-1)
        self._cache_mel = mel[..., -MEL_CACHE_FRAMES:].clone()
        self._cache_source = source[:, :, -OVERLAP_SAMPLES:].clone()
        self._cache_speech = speech[:, -OVERLAP_SAMPLES:].clone()
        if not last_chunk:
            speech = speech[:, :-OVERLAP_SAMPLES]
            if first:
                speech = torch.cat([torch.zeros(1, OVERLAP_SAMPLES, dtype=speech.dtype), speech], dim=1)
        return speech.float()

    def _empty_vocoder_caches(self) -> None:
        self._cache_mel = torch.zeros(1, 80, 0)
        self._cache_source = torch.zeros(1, 1, 0)
        self._cache_speech = torch.zeros(1, 0)
