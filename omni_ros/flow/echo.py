"""Echo cancelling against the played reference: the robot's published speech, stamped on the
ROS clock, removed from the microphone signal.

* `ReferenceBuffer`: the far-end signal on the 16 kHz sample grid of the ROS clock, a bounded ring
  read back by stamp.
* `FdafEchoCanceller`: a partitioned-block frequency-domain NLMS filter (our own numpy code) in
  two filters, one adapting and one cancelling, so that double talk cannot spoil the output and
  no double-talk threshold is needed; it models an echo path from 32 ms before `echo_delay_ms`
  to `tail_ms` after it.
* `WebRtcEchoCanceller`: the WebRTC audio-processing module's AEC3 (the `aec_audio_processing`
  package), on request: its suppressor attenuates a person talking over a loud echo.
* `make_echo_canceller`: picks one by name (the `echo_canceller` parameter; auto is fdaf).

A canceller takes mic and reference blocks already aligned by its user; `lead` says how many
samples of reference it wants ahead of the mic. No ROS here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .audio import float_to_s16le, s16le_to_float
from .types import INPUT_SAMPLE_RATE
from .units import sample_index

ECHO_CANCELLERS = ("auto", "fdaf", "webrtc", "none")


PLAYOUT_CONTINUITY_MS = 30.0   # a chunk stamped this close to the previous one's end follows it


def playout_start(first: int, previous_end: Optional[int], continuity: int) -> int:
    """Where a chunk stamped at grid index `first` starts playing: right after the previous chunk
    when its stamp is within `continuity` samples of that chunk's end (a loudspeaker plays its
    queue without gaps, whatever the publishing jitter), else at its stamp (a new stretch)."""
    if previous_end is not None and abs(first - previous_end) <= continuity:
        return previous_end
    return first


class ReferenceBuffer:
    """The far-end (robot speech) signal on the 16 kHz sample grid of the ROS clock, bounded.

    Chunks are laid where the loudspeaker plays them (`playout_start`): back to back while they
    come within PLAYOUT_CONTINUITY_MS of each other, so that the publisher's stamp jitter (a
    fraction of a millisecond to tens of them) does not shift the reference against the echo by
    a few samples at every chunk, which a linear canceller cannot follow above 1 kHz."""

    def __init__(self, seconds: float = 8.0, sample_rate: int = INPUT_SAMPLE_RATE) -> None:
        self.sample_rate = int(sample_rate)
        self.continuity = int(round(PLAYOUT_CONTINUITY_MS * sample_rate / 1000.0))
        self.size = int(seconds * sample_rate)
        self._data = np.zeros(self.size, dtype=np.float32)
        self._owner = np.full(self.size, -1, dtype=np.int64)   # grid index held by each slot
        self._ramp = np.arange(self.size, dtype=np.int64)
        self.newest_end: Optional[int] = None                   # grid index after the newest sample

    def index(self, stamp_ns: int) -> int:
        return sample_index(stamp_ns, self.sample_rate)

    def add(self, stamp_ns: int, samples: np.ndarray) -> Optional[int]:
        """Lay a chunk where the loudspeaker plays it; the grid index it starts at (None if
        empty)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.shape[0] == 0:
            return None
        first = playout_start(self.index(stamp_ns), self.newest_end, self.continuity)
        first += max(0, samples.shape[0] - self.size)                        # keeps the newest
        samples = samples[-self.size:]
        idx = np.arange(first, first + samples.shape[0])
        self._data[idx % self.size] = samples
        self._owner[idx % self.size] = idx
        end = first + samples.shape[0]
        self.newest_end = end if self.newest_end is None else max(self.newest_end, end)
        return first

    def get(self, first: int, n: int) -> np.ndarray:
        """n samples from grid index `first` (zeros where nothing was published)."""
        start = first % self.size
        if n > self.size or start + n > self.size:   # wraps around the ring
            idx = first + np.arange(n)
            slots = idx % self.size
            return np.where(self._owner[slots] == idx, self._data[slots], 0.0).astype(np.float32)
        held = self._owner[start:start + n] - first == self._ramp[:n]
        out = self._data[start:start + n].copy()
        out[~held] = 0.0
        return out

    def clear(self) -> None:
        self._owner[:] = -1
        self.newest_end = None


# The NLMS step in each frequency bin is normalised by the reference's energy there plus this
# share of its mean over the bins. Bins the robot's voice barely excites then take small steps,
# so room noise in the error does not drive their weights: with 1e-3 the background filter
# wandered there in noisy rooms, was taken over by the cancelling filter on the strength of the
# bins the voice did excite, and cancelled worse, until the canceller diverged and restarted
# (barge-in disarmed for a second or more; docs/barge_in_evaluation.md).
REGULARIZATION = 3e-3
CONSTRAINED_PER_BLOCK = 4   # partitions of the FDAF kept causal per block, in turn


class FdafEchoCanceller:
    """Partitioned-block frequency-domain NLMS (overlap-save), in two filters: a background
    filter that adapts on every block and a foreground filter that cancels, taking the
    background's weights whenever they have cancelled more of the recent mic than its own.

    Double talk (the person speaking over the robot) disturbs the background's adaptation, but it
    cannot reach the output: the background's error then carries the person too, so it is not
    better than the foreground's and nothing is copied. No double-talk threshold is needed, so
    the canceller works whatever the loudspeaker-to-mic gain (a loudspeaker near the mic makes
    the echo louder than the reference itself, which a Geigel detector takes for double talk).

    `process(near, far)` takes blocks of `block` samples, the reference given `lead` samples
    ahead of the mic (so an `echo_delay_ms` up to `lead_ms` too long is still causal), and models
    an echo path `tail_ms` long beyond the lead; `regularization` (REGULARIZATION) keeps the
    steps small in the bins the reference barely excites. `echo_estimate` holds the foreground's
    echo estimate for the samples of the last call (the residual gate of flow/bargein.py uses it)."""

    def __init__(self, block: int = 256, tail_ms: float = 256.0, lead_ms: float = 32.0,
                 step: float = 0.3, proportionate: bool = True,
                 regularization: float = REGULARIZATION,
                 sample_rate: int = INPUT_SAMPLE_RATE) -> None:
        self.block = int(block)
        self.regularization = float(regularization)
        self.proportionate = bool(proportionate)
        self.lead = int(round(lead_ms * sample_rate / 1000.0))
        span = self.lead + tail_ms * sample_rate / 1000.0
        self.partitions = max(1, int(np.ceil(span / self.block)))
        self.step = float(step)
        self.reset()

    def reset(self) -> None:
        B, P = self.block, self.partitions
        # single precision throughout: a canceller leaving -40 dB needs no more, at half the cost
        self._filters = np.zeros((2, P, B + 1), dtype=np.complex64)
        self._foreground, self._background = self._filters[0], self._filters[1]   # views
        # The reference's partition spectra and their |X|^2, newest first, in a ring written
        # twice (at i and i + P) so that the newest P are one contiguous slice [head, head + P)
        # whatever the head: no shifting of the whole history each block.
        self._ring = np.zeros((2 * P, B + 1), dtype=np.complex64)
        self._ring_energy = np.zeros((2 * P, B + 1), dtype=np.float32)
        self._head = 0
        self._products = np.zeros((2, P, B + 1), dtype=np.complex64)   # scratch
        self._update = np.zeros((P, B + 1), dtype=np.complex64)          # scratch
        self._energy = np.zeros(B + 1, dtype=np.float32)
        self._silent = True                         # no reference in the filter's whole span
        self._blocks = 0
        self._far_frame = np.zeros(2 * B, dtype=np.float32)     # previous block, this block
        self._error_frame = np.zeros(2 * B, dtype=np.float32)   # zeros, the background's error
        self._zeros = np.zeros(B, dtype=np.float32)
        self._floor = 1e-6                          # slow mean of the far energy per bin
        self._error_bg = self._error_fg = 0.0       # smoothed error energies of both filters
        self._near = 0.0                            # ...and of the mic
        self._near_slow = self._error_slow = 0.0    # the same over about 0.3 s
        self.echo_estimate = np.zeros(0, dtype=np.float32)
        self.copies = 0                             # background -> foreground
        self.restarts = 0                           # divergences caught
        self._constrain_order = [slice(int(part[0]), int(part[-1]) + 1) for part in
                                 np.array_split(np.arange(P), max(1, P // CONSTRAINED_PER_BLOCK))]
        self._constrain_next = 0

    @property
    def history(self) -> int:
        """How many samples of reference before a block its echo estimate uses."""
        return (self.partitions + 1) * self.block

    def resume(self, far_before: np.ndarray) -> None:
        """Go on after a gap in the mic stream: the reference spectra of the filter's span are
        rebuilt from `far_before` (the `history` samples of reference just before the next
        block, aligned as `process` takes it). The weights, the echo path, are kept: without
        this the next blocks would be filtered with the reference from before the gap, as if
        the gap had not been, and leave a burst of echo behind."""
        B, P = self.block, self.partitions
        far = np.zeros(self.history, dtype=np.float32)
        given = np.asarray(far_before, dtype=np.float32).reshape(-1)[-self.history:]
        far[far.shape[0] - given.shape[0]:] = given
        # Block j's spectrum is that of (block j - 1, block j); newest first from ring[P].
        frames = np.lib.stride_tricks.sliding_window_view(far, 2 * B)[::B][::-1]
        spectra = np.fft.rfft(frames, axis=1)
        self._ring[:P] = self._ring[P:] = spectra
        self._ring_energy[:P] = self._ring_energy[P:] = spectra.real ** 2 + spectra.imag ** 2
        self._energy = self._ring_energy[:P].sum(axis=0)
        self._head = 0
        self._far_frame[:B] = far[-B:]
        self._silent = not far.any()

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel `far`'s echo from `near`; both a whole number of blocks long."""
        B = self.block
        pairs = [self._process_block(near[i:i + B], far[i:i + B]) for i in range(0, len(near), B)]
        if not pairs:
            self.echo_estimate = np.zeros(0, dtype=np.float32)
            return np.zeros(0, dtype=np.float32)
        self.echo_estimate = np.concatenate([p[1] for p in pairs]).astype(np.float32)
        return np.concatenate([p[0] for p in pairs]).astype(np.float32)

    def _process_block(self, near: np.ndarray, far: np.ndarray):
        B, P = self.block, self.partitions
        near = np.asarray(near, dtype=np.float32)
        far = np.asarray(far, dtype=np.float32)
        if self._silent and not far.any():
            return near, self._zeros          # the robot silent for a whole filter span: idle
        self._far_frame[B:] = far
        X = np.fft.rfft(self._far_frame)
        self._far_frame[:B] = far
        head = self._head = (self._head - 1) % P
        new = X.real ** 2 + X.imag ** 2
        self._energy += new - self._ring_energy[head + P]   # |X|^2 summed over the partitions
        self._ring[head] = self._ring[head + P] = X
        self._ring_energy[head] = self._ring_energy[head + P] = new
        spectra = self._ring[head:head + P]
        self._blocks += 1
        if self._blocks % 256 == 0:                    # the running sum's rounding, cleared
            self._energy = self._ring_energy[:P].sum(axis=0)
        energy = np.maximum(self._energy, 0.0)
        if float(energy.max()) < 1e-8:
            # No reference in the filter's span: nothing to cancel, nothing to learn.
            self._silent = not far.any()
            if self._silent:
                self._ring[:] = 0.0
                self._ring_energy[:] = 0.0
                self._energy[:] = 0.0
            return near, self._zeros
        self._silent = False
        # Both filters' echo estimates in one inverse transform.
        np.multiply(self._filters, spectra, out=self._products)
        both = np.fft.irfft(self._products.sum(axis=1), n=2 * B)[:, B:]
        fg, bg = both[0], both[1]
        error_fg, error_bg = near - fg, near - bg
        self._floor = 0.99 * self._floor + 0.01 * float(energy.sum()) / energy.shape[0]
        self._error_frame[B:] = error_bg
        E = np.fft.rfft(self._error_frame)
        E *= self.step / (energy + np.float32(self.regularization * self._floor + 1e-10))
        update = np.conjugate(spectra, out=self._update)
        update *= E
        if self.proportionate and self._error_fg > 0.03 * self._near:
            # Until the echo is down 15 dB, proportionate steps: partitions holding more of the
            # echo path (the direct sound, the early reflections) adapt faster than the near-empty
            # late ones (IPNLMS-like: half of the step spread evenly, half by each partition's
            # share of the weights). Converged, even steps leave less misadjustment behind.
            weights = self._background.view(np.float32)
            norms = np.sqrt(np.einsum("pk,pk->p", weights, weights))
            share = 0.5 + 0.5 * P * norms / (float(norms.sum()) + 1e-6)
            update *= share[:, None]
        self._background += update
        # Each partition is kept a causal B-tap filter, a few partitions per block in turn (the
        # alternately constrained update: a fraction of the transforms, the same convergence).
        picked = self._constrain_order[self._constrain_next]
        self._constrain_next = (self._constrain_next + 1) % len(self._constrain_order)
        taps = np.fft.irfft(self._background[picked], n=2 * B, axis=1)
        self._background[picked] = np.fft.rfft(taps[:, :B], n=2 * B, axis=1)
        # Which filter cancels more of the recent mic (about 50 ms of memory)?
        near_energy = float(np.dot(near, near))
        fg_energy = float(np.dot(error_fg, error_fg))
        self._near = 0.7 * self._near + 0.3 * near_energy
        self._error_fg = 0.7 * self._error_fg + 0.3 * fg_energy
        self._error_bg = 0.7 * self._error_bg + 0.3 * float(np.dot(error_bg, error_bg))
        if self._error_bg < 0.8 * self._error_fg:
            self._foreground[:] = self._background
            self._error_fg = self._error_bg
            self.copies += 1
        elif self._error_bg > 8.0 * self._error_fg + 1e-9:
            # The background wandered off in double talk: start it again from the foreground.
            self._background[:] = self._foreground
            self._error_bg = self._error_fg
        # Over about a third of a second, does cancelling add more than it removes? Then the
        # filters diverged: start afresh and let this block's mic through as it is.
        self._near_slow = 0.95 * self._near_slow + 0.05 * near_energy
        self._error_slow = 0.95 * self._error_slow + 0.05 * fg_energy
        if self._error_slow > 2.0 * self._near_slow + 1e-9:
            self._filters[:] = 0.0
            self._error_fg = self._error_bg = self._near
            self._error_slow = self._near_slow
            self.restarts += 1
            return near, self._zeros
        return error_fg, fg


class WebRtcEchoCanceller:
    """The WebRTC audio-processing AEC through the optional `aec_audio_processing` package.

    AEC3 expects the echo to lag the reference it was given; an echo in the same 10 ms block
    as its reference (a microphone next to the speaker, or a simulation) is not cancelled and
    the robot would interrupt itself. So it gets the reference one block ahead of the mic."""

    def __init__(self, sample_rate: int = INPUT_SAMPLE_RATE, block: int = 160) -> None:
        from aec_audio_processing import AudioProcessor  # noqa: PLC0415 - optional dependency
        self.block = int(block)   # 10 ms at 16 kHz, what the module takes
        self.lead = self.block
        self._ap = AudioProcessor(enable_aec=True, enable_ns=False, enable_agc=False,
                                  enable_vad=False)
        self._ap.set_stream_format(sample_rate, 1, sample_rate, 1)
        self._ap.set_reverse_stream_format(sample_rate, 1)

    def reset(self) -> None:
        pass

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel `far`'s echo from `near`; both a whole number of 10 ms blocks long."""
        near16, far16, size = float_to_s16le(near), float_to_s16le(far), 2 * self.block
        out = b"".join(self._process_block(near16[i:i + size], far16[i:i + size])
                       for i in range(0, len(near16), size))
        return s16le_to_float(out)

    def _process_block(self, near16: bytes, far16: bytes) -> bytes:
        self._ap.process_reverse_stream(far16)
        return self._ap.process_stream(near16)


def make_echo_canceller(kind: str = "auto", tail_ms: float = 256.0):
    """'fdaf' | 'webrtc' | 'none' | 'auto' (fdaf) -> canceller or None.

    auto is the linear fdaf canceller: barge-in needs the person at full level in the residual,
    and AEC3's echo suppressor, made for calls, attenuates the near end while the echo is loud
    (benchmarks/results/barge_in_rooms.md)."""
    if kind not in ECHO_CANCELLERS:
        raise ValueError(f"echo_canceller must be one of {ECHO_CANCELLERS}, got {kind!r}")
    if kind == "none":
        return None
    if kind == "webrtc":
        return WebRtcEchoCanceller()
    return FdafEchoCanceller(tail_ms=tail_ms)
