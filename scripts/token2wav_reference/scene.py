"""The reference scene shared by the reference script and the test suite: a random-weight token2wav
folder, a voice and two turns of speech codes that exercise every streaming rule (the silence-code
start, 25 + 3 lookahead windows, the cache trim after the second call, an early flush at a turn's
first unit, the final flush, a second turn restoring the voice's caches), and omni_ros's run of it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import soundfile

from omni_ros.model.token2wav.model import Token2WavModel, synthetic_voice, write_random_assets
from omni_ros.session.waveform import WaveformStream
from omni_ros.model.token2wav.voice import Voice

NOISE_SEED = 0
VOCODER_SEED = 0
# (number of codes, turn_start, end_of_turn)
SCHEDULE = [(25, True, False), (25, False, False), (25, False, False), (25, False, True),
            (10, True, False), (12, False, True)]
# widths passed to the official code for folders not at released size
OFFICIAL_DIMS = {"tiny": {"hift_channels": 32, "tokenizer_dims": "128,2,2"},
                 "released": {"hift_channels": 512, "tokenizer_dims": "1280,20,6"}}


def units(seed: int = 0) -> List[Dict]:
    g = np.random.default_rng(seed)
    return [{"codes": g.integers(0, 6561, n).tolist(), "turn_start": start, "end_of_turn": end}
            for n, start, end in SCHEDULE]


def write_scene(folder: Path, size: str, seed: int = 0) -> Dict[str, Path]:
    """Assets, voice wav and units json under `folder`."""
    folder = Path(folder)
    assets = write_random_assets(folder / "token2wav", size=size, seed=seed)
    voice = folder / "voice.wav"
    soundfile.write(str(voice), synthetic_voice(seconds=3.0, seed=seed), 16000, subtype="PCM_16")
    units_path = folder / "units.json"
    units_path.write_text(json.dumps(units(seed)), encoding="utf-8")
    return {"assets": assets, "voice": voice, "units": units_path}


def run_omni_ros(assets: Path, voice: Path, unit_list: List[Dict], steps: int = 10, compute=None) -> Dict:
    """omni_ros's stream over the scene: per-call codes, mels and waveforms, and per-unit speech."""
    compute = compute or Token2WavModel.from_folder(assets)
    stream = WaveformStream(compute, steps=steps, seed=NOISE_SEED)
    calls: List[Dict] = []
    decode_mel, vocode = stream.decode_mel, stream.vocode

    def recording_decode(codes, last_chunk):
        mel = decode_mel(codes, last_chunk)
        wav = vocode(mel, last_chunk)
        calls.append({"codes": list(codes), "last_chunk": last_chunk, "mel": mel.numpy(), "wav": wav.numpy()[0]})
        return wav
    stream._decode = recording_decode
    prompt = stream.set_voice(Voice.from_wav(voice))
    unit_wavs = [stream.push(u["codes"], u["turn_start"], u["end_of_turn"]) for u in unit_list]
    return {"prompt": prompt, "calls": calls, "units": unit_wavs}


def compare(reference: Dict[str, np.ndarray], ours: Dict) -> Dict[str, float]:
    """Max abs differences relative to the reference's peak, per quantity (worst over calls)."""
    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))

    n = int(reference["calls"])
    out = {
        "calls": float(n == len(ours["calls"])),
        "prompt_tokens_equal": float(np.array_equal(reference["prompt_tokens"], ours["prompt"].codes.numpy())),
        "prompt_mel": rel(reference["prompt_mel"], ours["prompt"].mel.numpy()),
        "speaker_embedding": rel(reference["speaker_embedding"], ours["prompt"].embedding.numpy()),
        "codes_equal": float(all(np.array_equal(reference[f"call{i}_codes"], ours["calls"][i]["codes"])
                                 for i in range(min(n, len(ours["calls"]))))),
        "mel": max(rel(reference[f"call{i}_mel"], ours["calls"][i]["mel"]) for i in range(min(n, len(ours["calls"])))),
        "wav": max(rel(reference[f"call{i}_wav"].reshape(-1), ours["calls"][i]["wav"]) for i in range(min(n, len(ours["calls"])))),
    }
    units = [k for k in reference if k.startswith("unit") and k.endswith("_wav")]
    if units:
        out["unit_wav"] = max(rel(reference[k], ours["units"][int(k[4:-4])]) for k in units)
    return out
