"""SpeechPacer: chunking, real-time schedule, flush and the pending bound."""
import numpy as np
import pytest

from omni_ros.flow.audio import s16le_to_float
from omni_ros.flow.speech import SpeechPacer
from omni_ros.flow.types import OUTPUT_SAMPLE_RATE

pytestmark = pytest.mark.unit

SR = 24000
MS = 1_000_000
T0 = 5_000 * MS


def window_of_speech(value=0.25, n=SR):
    return np.full(n, value, np.float32)


def test_chunks_cover_exactly_one_window():
    pacer = SpeechPacer(SR, chunk_ms=200)
    speech = (np.sin(np.arange(SR) * 0.01) * 0.5).astype(np.float32)
    assert pacer.enqueue(7, speech, T0) == 5
    chunks = pacer.due(T0 + 10_000 * MS)
    assert [c.num_samples for c in chunks] == [4800] * 5
    assert [c.sample_offset for c in chunks] == [0, 4800, 9600, 14400, 19200]
    assert [c.index_in_unit for c in chunks] == list(range(5))
    assert all(c.window_index == 7 and len(c.data_bytes) == 2 * c.num_samples for c in chunks)
    decoded = np.concatenate([s16le_to_float(c.data_bytes) for c in chunks])
    np.testing.assert_allclose(decoded, speech, atol=1 / 16000)


def test_last_chunk_shorter_only_when_not_a_multiple():
    pacer = SpeechPacer(SR, chunk_ms=300)
    pacer.enqueue(0, window_of_speech(), T0)
    sizes = [c.num_samples for c in pacer.due(T0 + 10_000 * MS)]
    assert sizes == [7200, 7200, 7200, 2400] and sum(sizes) == SR


def test_pacing_times():
    pacer = SpeechPacer(SR, chunk_ms=200)
    pacer.enqueue(1, window_of_speech(), T0)
    assert [c.index_in_unit for c in pacer.due(T0)] == [0]
    assert pacer.due(T0 + 199 * MS) == []
    assert [c.index_in_unit for c in pacer.due(T0 + 200 * MS)] == [1]
    assert pacer.next_due_ns() == T0 + 400 * MS
    assert [c.index_in_unit for c in pacer.due(T0 + 650 * MS)] == [2, 3]
    # the next unit, enqueued early, starts exactly where this one ends
    pacer.enqueue(2, window_of_speech(), T0 + 700 * MS)
    chunks = pacer.due(T0 + 1000 * MS)
    assert [(c.window_index, c.index_in_unit) for c in chunks] == [(1, 4), (2, 0)]
    assert chunks[1].due_ns == T0 + 1000 * MS
    # after a pause, a new unit starts now, not in the past
    pacer.due(T0 + 10_000 * MS)
    pacer.enqueue(9, window_of_speech(), T0 + 20_000 * MS)
    assert pacer.next_due_ns() == T0 + 20_000 * MS


def test_flush_drops_pending():
    pacer = SpeechPacer(SR)
    pacer.enqueue(1, window_of_speech(), T0)
    pacer.enqueue(2, window_of_speech(), T0)
    pacer.due(T0 + 250 * MS)                 # 2 of unit 1 released
    assert pacer.flush() == 8
    assert pacer.due(T0 + 100_000 * MS) == []
    assert pacer.counters.chunks_flushed == 8
    pacer.enqueue(3, window_of_speech(), T0 + 300 * MS)   # starts now, not after the old queue
    assert pacer.next_due_ns() == T0 + 300 * MS


def test_pending_bounded_drops_oldest():
    pacer = SpeechPacer(SR, max_pending_windows=3)
    for k in range(5):                      # faster than real time (e.g. sim time)
        pacer.enqueue(k, window_of_speech(), T0)
    assert pacer.pending_windows == 3
    assert pacer.counters.units_dropped_overflow == 2
    assert pacer.counters.chunks_dropped_overflow == 10
    chunks = pacer.due(T0)
    assert [(c.window_index, c.index_in_unit) for c in chunks] == [(2, 0)]   # moved up in time
    assert pacer.play_end_ns == T0 + 3000 * MS


def test_empty_speech_is_ignored_and_clipping():
    pacer = SpeechPacer(SR)
    assert pacer.enqueue(0, np.zeros(0, np.float32), T0) == 0
    pacer.enqueue(1, np.array([2.0, -2.0, np.nan], np.float32), T0)
    (chunk,) = pacer.due(T0)
    assert np.frombuffer(chunk.data_bytes, "<i2").tolist() == [32767, -32767, 0]


def test_rejects_fractional_chunk():
    with pytest.raises(ValueError):
        SpeechPacer(22050, chunk_ms=3)


def test_drop_unstarted_keeps_the_unit_playing():
    pacer = SpeechPacer(OUTPUT_SAMPLE_RATE, 200)
    pacer.enqueue(0, np.zeros(OUTPUT_SAMPLE_RATE, np.float32), 0)
    pacer.enqueue(1, np.zeros(OUTPUT_SAMPLE_RATE, np.float32), 0)
    assert len(pacer.due(0)) == 1                       # unit 0 started playing
    assert pacer.drop_unstarted(10) == 5                # unit 1 had not: dropped
    assert pacer.pending_chunks == 4
    assert pacer.flush() == 4 and pacer.due(10**12) == []


def test_reference_cut_into_the_same_stretches_and_kept_when_units_move_up():
    """The echo canceller's reference (the speech at the microphone's 16 kHz) travels with each
    chunk: chunk k carries the k-th stretch of it, also after an overflow moved the units up."""
    speech = np.linspace(-1, 1, OUTPUT_SAMPLE_RATE, dtype=np.float32)
    reference = np.arange(16000, dtype=np.float32)
    pacer = SpeechPacer(OUTPUT_SAMPLE_RATE, 200, max_pending_windows=1)
    pacer.enqueue(0, speech, 0, reference=reference)
    pacer.enqueue(1, speech, 0, reference=reference + 16000)   # drops unit 0, moves unit 1 up
    chunks = pacer.due(10**12)
    assert [c.window_index for c in chunks] == [1] * 5 and chunks[0].due_ns == 0
    np.testing.assert_array_equal(np.concatenate([c.reference for c in chunks]), reference + 16000)
    assert [c.reference.shape[0] for c in chunks] == [3200] * 5
    pacer.enqueue(2, speech, 0)
    assert pacer.due(10**12)[0].reference is None
