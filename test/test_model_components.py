"""Components against independent computations (numpy) and the released rate/shape invariants."""
import math

import numpy as np
import pytest
import torch

from omni_ros.runtime.kv import StackedKV
from omni_ros.runtime.graphs import audio_kv_shape
from omni_ros.model.audio import LogMel, pooled_length
from omni_ros.model.config import OmniConfig
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.session.audio_stream import StreamingAudioEncoder, StreamingMel, embed_audio
from omni_ros.session.sampling import Sampler, repetition_penalty
from omni_ros.session.speech import SpeechTurn, generate_codes
from omni_ros.model.vision import SiglipEmbeddings, best_resize, sincos_2d

pytestmark = pytest.mark.unit

SR, NFFT, HOP = 16000, 400, 160


# --- log-mel front end ------------------------------------------------------------------------

def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    lin = 3.0 * f / 200.0
    logstep = math.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / logstep, lin)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    logstep = math.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), 200.0 * m / 3.0)


def _ref_filterbank(n_mels=80):
    """Slaney mel filterbank [n_mels, 201] written from the formula (no library)."""
    fft_freqs = np.linspace(0, SR / 2, NFFT // 2 + 1)
    pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SR / 2), n_mels + 2))
    fb = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        up = (fft_freqs - lo) / (c - lo)
        down = (hi - fft_freqs) / (hi - c)
        fb[i] = np.maximum(0, np.minimum(up, down)) * (2.0 / (hi - lo))
    return fb


def _ref_logmel(x, floor=None):
    """numpy STFT (centre, reflect pad, periodic Hann), power, mel, log10, floor rule, (x+4)/4."""
    x = np.pad(x.astype(np.float64), NFFT // 2, mode="reflect")
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(NFFT) / NFFT)
    n = 1 + (len(x) - NFFT) // HOP
    frames = np.stack([x[i * HOP: i * HOP + NFFT] * win for i in range(n)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    log = np.log10(np.maximum(_ref_filterbank() @ power[:, :-1], 1e-10))
    log = np.maximum(log, log.max() - 8.0) if floor is None else np.maximum(log, floor)
    return (log + 4.0) / 4.0


def test_log_mel_matches_reference_formula():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(SR)).astype(np.float32)
    mel = LogMel(80)
    for floor in (None, -10.0):
        ours = mel(torch.from_numpy(x)[None], floor=floor)[0].numpy()
        ref = _ref_logmel(x, floor)
        assert ours.shape == ref.shape == (80, 100)
        np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_streaming_mel_chunks_and_floor_rule():
    sm = StreamingMel(LogMel(80))
    assert sm.next_chunk_samples() == 16480                 # 1035 ms aligned down to the hop
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(16480 + 6 * 16000)).astype(np.float32)
    mel0, pre0, suf0 = sm.process(audio[:16480])
    assert (mel0.shape[-1], pre0, suf0) == (102, 0, 2)      # 100 core + 2 right context frames
    ref0 = _ref_logmel(audio[:16480], floor=-10.0)          # buffer < 5 s: fixed floor
    np.testing.assert_allclose(mel0.numpy(), ref0[:, :102], atol=2e-3)
    pos = 16480
    for k in range(6):
        mel, pre, suf = sm.process(audio[pos: pos + 16000])
        pos += 16000
        assert (mel.shape[-1], pre, suf) == (104, 2, 2)     # 2 frames (20 ms) each side
        floor = -10.0 if pos < 5 * SR else None             # from 5 s on: max - 8
        ref = _ref_logmel(audio[:pos], floor=floor)
        core = 100 * (k + 1)
        np.testing.assert_allclose(mel.numpy(), ref[:, core - 2: core + 102], atol=2e-3)


def test_pooling_rates():
    assert pooled_length(100) == pooled_length(102) == pooled_length(104) == 10
    assert pooled_length(250) == 25 and pooled_length(3000) == 300


def test_audio_tokens_per_second_streaming_and_offline(tiny_model):
    compute = TorchCompute(tiny_model)
    enc = StreamingAudioEncoder(compute)
    rng = np.random.default_rng(2)
    with torch.inference_mode():
        counts = [enc.embed_unit((0.1 * rng.standard_normal(16000)).astype(np.float32)).shape[0]
                  for _ in range(3)]
        assert counts == [10] * 3                         # first (1035 ms) chunk included
        assert enc.cache_length == 150 and enc.mel.chunks == 3
        # near the 1500-position table the encoder cache restarts (as released)
        shape = audio_kv_shape(tiny_model.config, 1460)
        enc.cache = StackedKV(torch.zeros(shape), torch.zeros(shape))
        assert enc.embed_unit(np.zeros(16000, np.float32)).shape[0] == 10
        assert enc.cache_length == 50
        half = StreamingAudioEncoder(compute, chunk_ms=500)     # 0.5 s units: 5 tokens each
        assert [half.embed_unit(np.zeros(8000, np.float32)).shape[0] for _ in range(4)] == [5] * 4
        off = embed_audio(compute, torch.zeros(1, 40000))
    assert off.shape == (1, 25, tiny_model.config.hidden_size)


# --- vision -----------------------------------------------------------------------------------

def test_sincos_2d_matches_formula():
    dim, gh, gw = 16, 3, 5
    ours = sincos_2d(dim, gh, gw).numpy()
    half, quarter = dim // 2, dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    for h in range(gh):
        for w in range(gw):
            row = ours[h * gw + w]
            # first half from the width coordinate, second from the height; each [sin | cos]
            np.testing.assert_allclose(row[:quarter], np.sin(w * omega), atol=1e-6)
            np.testing.assert_allclose(row[quarter:half], np.cos(w * omega), atol=1e-6)
            np.testing.assert_allclose(row[half:half + quarter], np.sin(h * omega), atol=1e-6)
            np.testing.assert_allclose(row[half + quarter:], np.cos(h * omega), atol=1e-6)


def test_navit_position_bucketing():
    cfg = OmniConfig.released()
    emb = SiglipEmbeddings.__new__(SiglipEmbeddings)
    emb.num_patches_per_side = cfg.vision_config.num_patches_per_side
    assert emb.num_patches_per_side == 70
    for gh, gw in ((37, 29), (29, 37), (5, 3), (70, 70)):
        ours = SiglipEmbeddings.position_ids(emb, gh, gw, "cpu").numpy()
        n = 70
        bh = [(i * n) // gh for i in range(gh)]          # floor(i/gh * 70): exact integers
        bw = [(j * n) // gw for j in range(gw)]
        ref = np.array([h * n + w for h in bh for w in bw])
        np.testing.assert_array_equal(ours, ref)


def test_image_size_rule_and_tokens_per_image(tiny_model):
    assert best_resize(640, 480, 448, 14) == (518, 392)
    assert best_resize(448, 448, 448, 14) == (448, 448)
    assert OmniConfig.released().query_num == 64
    with torch.inference_mode():
        for shape in ((480, 640, 3), (100, 50, 3), (64, 64, 3)):
            v = tiny_model.embed_image(np.zeros(shape, np.uint8))
            assert v.shape == (tiny_model.config.query_num, tiny_model.config.hidden_size)


# --- speech -----------------------------------------------------------------------------------

def test_repetition_penalty_rules():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    # the speech decoder's: the penalty to the power of the count, negative logits multiplied
    out = repetition_penalty(logits, [0, 0, 1, 3], 1.05, counted=True)
    np.testing.assert_allclose(out.numpy(), [2.0 / 1.05 ** 2, -2.0 * 1.05, 1.0, 0.5 / 1.05], rtol=1e-6)
    # the turn-based generator's: once per token, negative logits multiplied
    out = repetition_penalty(logits, [0, 0, 1, 3], 1.05)
    np.testing.assert_allclose(out.numpy(), [2.0 / 1.05, -2.0 * 1.05, 1.0, 0.5 / 1.05], rtol=1e-6)
    # the duplex decoder's: once per token, divided whatever the sign
    out = repetition_penalty(logits, [0, 0, 1, 3, 99], 1.05, sign_aware=False)
    np.testing.assert_allclose(out.numpy(), [2.0 / 1.05, -2.0 / 1.05, 1.0, 0.5 / 1.05], rtol=1e-6)
    assert repetition_penalty(logits, [], 1.05) is logits and repetition_penalty(logits, [1], 1.0) is logits
    np.testing.assert_array_equal(logits.numpy(), [2.0, -2.0, 1.0, 0.5])     # never in place


def test_25_codes_and_24000_samples_per_speaking_unit(tiny_model):
    m = tiny_model
    c = TorchCompute(m)
    ids = torch.tensor(m.tokenizer.encode(" hello there", add_special_tokens=False))
    with torch.inference_mode():
        cond = m.tts.condition(ids, torch.randn(len(ids), m.config.hidden_size))
        assert cond.shape == (len(ids) + 1, m.config.tts_config.hidden_size)
        state = SpeechTurn()
        codes = generate_codes(c.tts_step, c.tts_code_embed, c.new_tts_cache, cond, state, Sampler(0),
                               max_new_tokens=26, min_new_tokens=26)
        assert len(codes) == 25 and max(codes) < m.config.tts_config.audio_eos_code
        assert state.position == cond.shape[0] + 25 == state.cache.get_seq_length()
    from omni_ros.session.waveform import WaveformStream
    from omni_ros.model.token2wav.voice import Voice

    stream = WaveformStream(m.token2wav, steps=2)
    stream.set_voice(Voice.from_wav(m.default_voice))
    wav = stream.push(codes, turn_start=True, end_of_turn=False)
    assert wav.shape == (24000,)
