"""VoiceActivity (silero-vad): silence is quiet, speech is speech, state resets."""
import os
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("silero_vad", reason="silero-vad is not installed")

from omni_ros.flow.vad import VoiceActivity, energy_speech_probability  # noqa: E402

pytestmark = pytest.mark.unit

SR = 16000


@pytest.fixture(scope="module")
def vad():
    return VoiceActivity()


def synthetic_vowels(seconds=1.0):
    """Pulse train at a wavering pitch through three vowel formants, in syllable-like bursts."""
    from scipy import signal
    n = int(SR * seconds)
    t = np.arange(n) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = np.cumsum(f0) / SR
    y = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    for freq, bandwidth in [(700, 130), (1220, 70), (2600, 160)]:
        r = np.exp(-np.pi * bandwidth / SR)
        y = signal.lfilter([1], [1, -2 * r * np.cos(2 * np.pi * freq / SR), r * r], y)
    y *= (np.sin(2 * np.pi * 4 * t) > 0)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def test_silence_is_not_speech(vad):
    vad.reset()
    assert vad.speech_probability(np.zeros(SR, np.float32)) < 0.1
    assert vad(np.zeros(SR, np.float32)) < 0.1


def test_synthetic_vowels_score_above_silence(vad):
    vad.reset()
    silence = vad(np.zeros(SR, np.float32))
    vad.reset()
    assert vad(synthetic_vowels()) > max(0.5, silence)


def test_short_input_is_carried_over(vad):
    vad.reset()
    assert vad(np.zeros(100, np.float32)) == 0.0       # not a whole chunk yet
    vad(np.zeros(500, np.float32))                     # completes one chunk, carries 88
    assert vad.chunks_processed >= 1


def test_energy_gate():
    assert energy_speech_probability(np.zeros(SR, np.float32)) == 0.0
    assert energy_speech_probability(np.full(SR, 0.5, np.float32)) == 1.0
    assert energy_speech_probability(np.full(SR, 0.01, np.float32)) == pytest.approx(0.5, abs=0.01)


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed (apt-get install espeak-ng) to synthesize speech")
def test_spoken_sentence_is_speech(vad, tmp_path):
    soundfile = pytest.importorskip("soundfile")
    from scipy.signal import resample_poly
    wav = os.path.join(tmp_path, "hello.wav")
    subprocess.run(["espeak-ng", "-w", wav, "hello robot, can you hear me"], check=True,
                   capture_output=True, timeout=30)
    audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    g = np.gcd(rate, SR)
    audio = resample_poly(audio, SR // g, rate // g).astype(np.float32)
    vad.reset()
    windows = [audio[i:i + SR] for i in range(0, audio.shape[0], SR)]
    assert max(vad(w) for w in windows) > 0.8


def test_onnx_model_gives_the_torchscript_probabilities(vad):
    """The ONNX model run here and silero's own TorchScript model agree chunk by chunk."""
    import torch
    from silero_vad import load_silero_vad

    jit = load_silero_vad()
    audio = np.concatenate([np.zeros(SR // 2, np.float32), synthetic_vowels(1.0),
                            0.05 * np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32)])
    vad.reset()
    ours, theirs = [], []
    with torch.no_grad():
        for chunk in audio[: len(audio) // 512 * 512].reshape(-1, 512):
            ours.append(vad(chunk))
            theirs.append(float(jit(torch.from_numpy(chunk)[None], SR)))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert max(theirs) > 0.5 and min(theirs) < 0.1          # speech and silence both present
