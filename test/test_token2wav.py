"""The waveform stage (Step-Audio2 token2wav) against the official implementation, its streaming
schedule, the loading refusals and the reference voice.

`test/data/token2wav_reference_tiny.npz` is what the official implementation (minicpmo-utils 1.0.6)
computed for the reference scene of scripts/token2wav_reference (rewritten with
`scripts/token2wav_reference/run --size tiny --save test/data/token2wav_reference_tiny.npz`); the
scene's folder, voice and codes are written again here from their seeds.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from omni_ros.model.loader import CheckpointError, load_model
from omni_ros.model.token2wav import assets as A
from omni_ros.model.token2wav.model import Token2WavModel, synthetic_voice
from omni_ros.session.waveform import OVERLAP_SAMPLES, WINDOW_SAMPLES, WaveformStream
from omni_ros.model.token2wav.voice import Voice, VoiceError, resample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "token2wav_reference"))
import scene  # noqa: E402

pytestmark = pytest.mark.unit

REFERENCE = ROOT / "test" / "data" / "token2wav_reference_tiny.npz"
FLUSH_SAMPLES = (3 * 2 + 8) * 480       # lookahead codes (2 frames each) + the 8 held-back frames


@pytest.fixture(scope="module")
def reference_scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2w_scene")
    files = scene.write_scene(folder, "tiny")
    return files, scene.run_omni_ros(files["assets"], files["voice"], scene.units())


def test_stream_equals_the_official_implementation(reference_scene):
    """Prompt codes, speaker embedding, prompt mel, and every call's mel and waveform (the silence-
    code start, the 25 + 3 windows, the cache trim, an early flush, the final flushes, a second turn)
    within 1e-4 of the official output's peak."""
    reference = dict(np.load(REFERENCE))
    _, ours = reference_scene
    result = scene.compare(reference, ours)
    assert result["calls"] == 1 and result["codes_equal"] == 1, result
    assert result["prompt_tokens_equal"] == 1, result
    assert result["speaker_embedding"] < 1e-5 and result["prompt_mel"] < 1e-5, result
    assert result["mel"] < 1e-4, result
    assert result["wav"] < 1e-4, result


def test_call_lengths_follow_the_released_schedule(reference_scene):
    _, ours = reference_scene
    calls = ours["calls"]
    # turn 1: four 28-code calls (the first starts with 3 silence codes), then the 3 held-back codes
    assert [len(c["codes"]) for c in calls[:5]] == [28, 28, 28, 28, 3]
    assert calls[0]["codes"][:3] == [4218] * 3
    assert [c["last_chunk"] for c in calls[:5]] == [False] * 4 + [True]
    assert all(c["wav"].shape[0] == WINDOW_SAMPLES for c in calls[:4])
    assert not calls[0]["wav"][:OVERLAP_SAMPLES].any(), "a turn's first call starts with 160 ms of zeros"
    assert calls[4]["wav"].shape[0] == FLUSH_SAMPLES
    # turn 2 starts again from silence codes: an early flush of 3 + 10 codes, then the last chunk
    assert calls[5]["codes"][:3] == [4218] * 3 and len(calls[5]["codes"]) == 13
    assert calls[6]["last_chunk"]
    units = ours["units"]
    assert [u.shape[0] for u in units] == [WINDOW_SAMPLES] * 3 + [WINDOW_SAMPLES + FLUSH_SAMPLES,
                                                                  WINDOW_SAMPLES, calls[6]["wav"].shape[0]]
    assert all(np.sqrt(np.mean(u ** 2)) > 1e-3 for u in units), "speech, not silence"


def test_a_new_turn_drops_codes_not_yet_spoken(reference_scene):
    """Barge-in: start_turn() forgets the buffered lookahead codes and restores the voice's caches,
    so the next turn is decoded exactly like a first turn."""
    files, _ = reference_scene
    model = Token2WavModel.from_folder(files["assets"])
    stream = WaveformStream(model, steps=2)
    stream.set_voice(Voice.from_wav(files["voice"]))
    codes = list(range(100, 125))
    first = stream.push(codes, turn_start=True, end_of_turn=False)
    assert stream.pending_codes == 3
    stream.push(list(range(200, 225)), turn_start=False, end_of_turn=False)
    stream.start_turn()
    assert stream.pending_codes == 3            # the three silence codes, nothing of the old turn
    again = stream.push(codes, turn_start=True, end_of_turn=False)
    np.testing.assert_array_equal(first, again)


def test_voice_change_recomputes_the_prompt(reference_scene, tmp_path):
    files, _ = reference_scene
    model = Token2WavModel.from_folder(files["assets"])
    stream = WaveformStream(model, steps=2)
    one = stream.set_voice(Voice.from_wav(files["voice"]))
    other_path = tmp_path / "other.wav"
    soundfile.write(str(other_path), synthetic_voice(seconds=2.0, rate=44100, seed=5), 44100, subtype="PCM_16")
    two = stream.set_voice(Voice.from_wav(other_path))
    assert two.codes.shape[1] == 50 and two.mel.shape[1] == 100          # 2 s: 25 codes/s, 2 frames a code
    assert not torch.equal(one.embedding, two.embedding)


# --- files -----------------------------------------------------------------------------------

@pytest.fixture
def assets(reference_scene, tmp_path):
    folder = tmp_path / "token2wav"
    shutil.copytree(reference_scene[0]["assets"], folder)
    return folder


def test_flow_yaml_round_trips_as_data():
    text = A.dump_flow_yaml(A.FlowConfig())
    assert text.startswith("flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec")
    assert A.parse_flow_yaml(text) == A.FlowConfig()


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!new:builtins.eval"])
def test_a_flow_yaml_tag_that_could_run_code_is_refused(assets, tag):
    path = assets / A.FLOW_YAML
    path.write_text(path.read_text().replace(A.TAG_ENCODER, tag))
    with pytest.raises(A.AssetError, match="unknown tag"):
        Token2WavModel.from_folder(assets)


def test_an_unknown_flow_yaml_key_is_named(assets):
    path = assets / A.FLOW_YAML
    text = path.read_text()
    indent = text.split("num_blocks:")[0].rsplit("\n", 1)[1]
    path.write_text(text.replace(f"{indent}num_blocks:", f"{indent}num_blockz: 3\n{indent}num_blocks:"))
    with pytest.raises(A.AssetError, match=r"flow\.encoder\.num_blockz"):
        Token2WavModel.from_folder(assets)


def test_a_missing_file_is_named_through_the_checkpoint_loader(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / A.ASSET_DIR / A.SPEAKER_ONNX).unlink()
    with pytest.raises(CheckpointError, match="campplus.onnx"):
        load_model(folder)


def test_a_mis_shaped_weight_is_named(assets):
    state = torch.load(str(assets / A.FLOW_WEIGHTS), weights_only=True)
    state["encoder_proj.weight"] = state["encoder_proj.weight"][:, :-1]
    state["surplus.weight"] = torch.zeros(1)
    torch.save(state, str(assets / A.FLOW_WEIGHTS))
    with pytest.raises(A.AssetError, match=r"encoder_proj\.weight .*expected") as error:
        Token2WavModel.from_folder(assets)
    assert "surplus.weight" in str(error.value)


def test_a_vocoder_key_missing_is_named(assets):
    state = torch.load(str(assets / A.HIFT_WEIGHTS), weights_only=True)
    del state["f0_predictor.classifier.weight"]
    torch.save(state, str(assets / A.HIFT_WEIGHTS))
    with pytest.raises(A.AssetError, match="f0_predictor.classifier.weight"):
        Token2WavModel.from_folder(assets)


def test_the_causal_vocoder_layout_is_refused_with_its_name(assets):
    (assets / "config.yaml").write_text("hift: null\n")
    shutil.copy(assets / A.HIFT_WEIGHTS, assets / "hift_original.pt")
    with pytest.raises(A.AssetError, match="1.0.7 layout"):
        Token2WavModel.from_folder(assets)


# --- the reference voice ------------------------------------------------------------------------

def test_voices_that_cannot_be_used_are_refused(tmp_path):
    with pytest.raises(VoiceError, match="cannot read"):
        Voice.from_wav(tmp_path / "missing.wav")
    with pytest.raises(VoiceError, match="NaN"):
        Voice.from_samples(np.full(16000, np.nan, np.float32), 16000)
    with pytest.raises(VoiceError, match="longer than"):
        Voice.from_samples(np.zeros(16000 * 31, np.float32), 16000)
    with pytest.raises(VoiceError, match="shorter than"):
        Voice.from_samples(np.zeros(100, np.float32), 16000)


def test_a_stereo_44k_voice_is_read_at_both_rates(tmp_path):
    path = tmp_path / "stereo.wav"
    left = synthetic_voice(seconds=1.0, rate=44100)
    soundfile.write(str(path), np.stack([left, 0.5 * left], axis=1), 44100, subtype="PCM_16")
    voice = Voice.from_wav(path)
    assert voice.audio_16k.shape[0] == 16000 and voice.audio_24k.shape[0] == 24000


def test_resampling_keeps_a_tone_and_removes_what_is_above_the_new_nyquist():
    t = torch.arange(44100) / 44100.0
    tone = torch.sin(2 * torch.pi * 440 * t)
    alias = torch.sin(2 * torch.pi * 12000 * t)
    out = resample((tone + alias).float(), 44100, 16000)
    spectrum = torch.fft.rfft(out[1000:-1000] * torch.hann_window(14000))
    freqs = torch.fft.rfftfreq(14000, 1 / 16000)
    peak = float(freqs[spectrum.abs().argmax()])
    assert abs(peak - 440) < 5
    assert float(spectrum.abs()[freqs > 3000].max()) < 1e-2 * float(spectrum.abs().max())
