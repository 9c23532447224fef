"""Barge-in in a simulated room, over real DDS between real processes (issue #16's CI set).

omni_flow_clock and omni_node (tiny model) run as processes; a driver node plays the mic as a
reverberant room with babble would hear it (benchmarks/acoustics.py): the robot's own published
speech through a loudspeaker 10 cm from the mic, arriving 40 ms after it was published while
omni_node is told echo_delay_ms 20 (off by 20 ms), and a person 1.5 m away, male and female,
phrases with vowel and fricative onsets, over at least 60 s of echo-only speech. Issue #16 asks
that every interruption stop the robot and its own voice never do; these tests hold the bar
reached so far (benchmarks/results/barge_in_rooms.md), and benchmarks/barge_in_rooms.py runs the
full grid with the same code.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.dds

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import acoustics as A  # noqa: E402
import barge_in_rooms as rooms  # noqa: E402

TRIALS = 2              # per condition: 4 conditions, 8 interruptions
ECHO_SECONDS = 16.0     # echo-only per condition beyond the trials' tails: > 60 s in all


@pytest.mark.unit
def test_the_room_is_physical_and_seeded():
    """The simulation the DDS test relies on: the loudspeaker 10 cm away is louder at the mic
    than the person 1.5 m away, reverberation is as asked, noise sits at the SNR, and the same
    condition gives the same signals."""
    c = rooms.CI_GRID[0]
    scene = A.Scene(c, robot_rms=0.03)
    again = A.Scene(c, robot_rms=0.03)
    assert np.array_equal(scene.noise, again.noise)
    wet, onset, _, _ = scene.person(0)
    assert np.array_equal(wet, again.person(0)[0])
    assert 0.45 <= scene.room.rt60_measured <= 0.9
    assert scene.echo_to_person_db > 10.0
    snr = 20 * np.log10(A.active_rms(wet) / A.active_rms(scene.noise_at(0, 10 * A.RATE)))
    assert abs(snr - c.snr_db) < 3.0
    assert 0 < onset < wet.shape[0] // 2
    # The echo path overlap-adds reverberation tails across chunks, delayed by the latency.
    path = A.EchoPath(scene.room.speaker, 1.0, latency_ms=40.0)
    x = np.random.default_rng(0).standard_normal(3200).astype(np.float32)
    path.add(0, x[:1600])
    path.add(1600, x[1600:])
    whole = A.convolve(x, scene.room.speaker)
    got = path.get(0, 6000)
    assert np.all(got[:640] == 0)
    np.testing.assert_allclose(got[640:6000], whole[:5360], atol=1e-4)


@pytest.fixture(scope="module")
def ci_room(tiny_checkpoint, ros_env, tmp_path_factory):
    """The CI room played to omni_node over DDS, once for the tests below; omni_node records its
    barge-in detector's inputs (barge_in_record_path, a folder)."""
    record_dir = tmp_path_factory.mktemp("barge_in_recording")
    results = rooms.run_conditions(rooms.CI_GRID, tiny_checkpoint, TRIALS, ECHO_SECONDS,
                                   record_dir=record_dir)
    return results, rooms.table(results), record_dir


def test_the_ci_room_is_what_the_node_expects(ci_room):
    """The harness itself: every condition ran, the mic always had the echo the node expects
    (the robot's speech reached the room before the loudspeaker was due to play it), the
    canceller learnt it, and there was at least 60 s of the robot's echo alone."""
    results, table, _ = ci_room
    assert len(results) == len(rooms.CI_GRID), table
    for r in results:
        assert r.late_echo_ms < 100, table
        assert r.erle_db > 10.0, f"{r.condition.name}: the canceller did not learn the echo\n{table}"
    assert sum(r.echo_speech_s for r in results) >= 60.0, table


def missed_and_false(results):
    missed = [f"{r.condition.name} trial {k}: {t.voice}: {t.text!r}"
              for r in results for k, t in enumerate(r.trials) if not t.detected]
    return missed, sum(r.false_barge_ins for r in results)


def test_most_interruptions_stop_the_robot_and_its_echo_does_not(ci_room):
    """Where barge-in stands in the CI room over DDS: at least 7 of the 8 interruptions stop
    the robot, and its echo, 17 dB louder at the mic than the person, stops it at most once in
    the 80 s, both counted by the onsets omni_node publishes on omni/barge_in. Runs of the band
    gate so far stopped 8 of 8, with no false barge-in since they are counted by onset
    (benchmarks/results/barge_in_rooms.md; slow stops are silero scoring this quiet a voice
    under the threshold; issue #16 asks for every one and at most one false barge-in in 10
    minutes). Before the linear two-filter canceller and the residual gate measured against
    the canceller's own residual, 0-1 of these 8 did."""
    results, table, _ = ci_room
    missed, false = missed_and_false(results)
    trials = sum(len(r.trials) for r in results)
    assert len(missed) <= 1, f"{trials - len(missed)} of {trials} stopped the robot\n{table}"
    assert false <= 1, f"{false} false barge-ins\n{table}"


def test_the_node_s_recording_replays_to_the_barge_ins_it_published(ci_room):
    """barge_in_record_path over DDS: omni_node's recording of what its detector was given,
    replayed offline through a fresh detector (omni_ros_barge_in_replay), gives the barge-ins the
    node published on omni/barge_in, at the same stamps."""
    from omni_ros.flow.bargein_record import read_recording
    from omni_ros.tools.barge_in_replay import replay
    results, table, record_dir = ci_room
    files = sorted(record_dir.glob("barge_in_*.obr"))
    assert len(files) == 1, files                     # one omni_node serves the CI room
    recording = read_recording(files[0])
    assert recording.header["detector"]["echo_delay_ms"] == rooms.CI_ROOM["echo_delay_ms"]
    published = [o for r in results for o in r.onsets_ns]
    assert published, table
    spans = [r.span_ns for r in results]
    assert [o for o in recording.decisions if any(a <= o < b for a, b in spans)] == published
    result = replay(recording)
    assert result.same, (result.recorded, result.replayed)


@pytest.mark.unit
def test_a_stop_is_measured_whether_or_not_the_robot_speaks_again():
    """The stop latency the grid reports: the last chunk before the robot's voice breaks off, also
    when it then stays silent (once counted as talking on, which left that trial's stop out of
    the figures), and None only while it still speaks at the end of what is looked at."""
    ns = rooms.NS
    chunk = 0.2
    onset, end = 10 * ns, 12 * ns

    def chunks(first_s, last_s):      # back-to-back 200 ms chunks stamped first_s..last_s
        n = int(round((last_s - first_s) / chunk)) + 1
        return [(int((first_s + k * chunk) * ns), chunk, 0.0) for k in range(n)]

    stop = rooms._stop_after(chunks(8.0, 10.2) + chunks(11.0, 13.0), onset, end, chunk)
    assert stop == pytest.approx(0.2)                    # stopped, then spoke again
    assert rooms._stop_after(chunks(8.0, 10.2), onset, end, chunk) == pytest.approx(0.2)
    assert rooms._stop_after(chunks(8.0, 14.0), onset, end, chunk) is None   # talked on
    assert rooms._stop_after(chunks(8.0, 12.4), onset, end, chunk) is None   # stopped after the phrase
