"""Run the official Step-Audio2 token2wav (PyPI minicpmo-utils 1.0.6) on a token2wav folder and dump
what it computes, for omni_ros to be checked against. Runs in the official venv only (see `run`).

The official code targets CUDA; here it runs on the CPU through run-time redirections (no file of the
package is changed): `.cuda()` is the identity, tensors asked for on 'cuda' are made on the CPU, and
autocast is a no-op (fp32). Folders written at other than released dimensions need two more run-time
adjustments: the vocoder and the speech tokenizer are built with the folder's widths (the official
code builds them with released defaults), and the flow-matching cache buffers are sized for the folder.

Randomness is made reproducible: the flow-matching noise buffer is replaced by
`randn([1, 80, 30000], generator=Generator().manual_seed(noise_seed))` and the global generator is
seeded with `vocoder_seed` at every turn start (the vocoder draws from it at every call).
Units are driven as MiniCPM-o 4.5's duplex code drives them (`_generate_waveform_from_tokens` and the
turn reset of modeling_minicpmo.py).
"""
import argparse
import contextlib
import copy
import json
import sys
import types

import numpy as np
import torch


def _cpu_redirections():
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self

    def on_cpu(fn):
        def wrapped(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return fn(*args, **kwargs)
        return wrapped

    proxy = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")})
    for name in ("tensor", "zeros", "ones", "full", "empty", "arange"):
        setattr(proxy, name, on_cpu(getattr(torch, name)))
    proxy.amp = types.SimpleNamespace(autocast=lambda *a, **k: contextlib.nullcontext())
    return proxy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--assets", required=True)
    p.add_argument("--voice", required=True, help="16 kHz prompt wav")
    p.add_argument("--units", required=True, help="json: [{codes: [...], turn_start: bool, end_of_turn: bool}]")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--vocoder-seed", type=int, default=0)
    p.add_argument("--hift-channels", type=int, default=512)
    p.add_argument("--tokenizer-dims", default="1280,20,6", help="width,heads,blocks")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(2)

    proxy = _cpu_redirections()
    import s3tokenizer
    from s3tokenizer.model import ModelConfig
    import stepaudio2.token2wav as t2w_module
    from stepaudio2.flashcosyvoice.modules.hifigan import ConvRNNF0Predictor, HiFTGenerator

    t2w_module.torch = proxy
    width, heads, blocks = (int(v) for v in a.tokenizer_dims.split(","))
    official_tokenizer = s3tokenizer.S3TokenizerV2
    s3tokenizer.S3TokenizerV2 = lambda name: official_tokenizer(
        name, ModelConfig(n_audio_state=width, n_audio_head=heads, n_audio_layer=blocks))
    t2w_module.HiFTGenerator = lambda: HiFTGenerator(
        base_channels=a.hift_channels, f0_predictor=ConvRNNF0Predictor(cond_channels=a.hift_channels))

    model = t2w_module.Token2wav(a.assets, n_timesteps=a.steps)
    cfm = model.flow.decoder
    dit = cfm.estimator
    depth, attn = len(dit.blocks), dit.blocks[0].attn
    conv = dit.blocks[0].conv
    conv_channels = conv.in_channels + conv.out_channels
    cfm.cnn_cache_buffer = torch.zeros(16, depth, 2, conv_channels, 2)
    cfm.att_cache_buffer = torch.zeros(16, depth, 2, attn.num_heads, 1000, 2 * attn.head_dim)
    dit.cnn_cache_buffer = torch.zeros(depth, 2, conv_channels, 2)
    dit.att_cache_buffer = torch.zeros(depth, 2, attn.num_heads, 1000, 2 * attn.head_dim)
    cfm.rand_noise = torch.randn([1, cfm.out_channels, 50 * 600], generator=torch.Generator().manual_seed(a.noise_seed))

    calls = []
    official_chunk = model.flow.inference_chunk

    def recording_chunk(token, spk, cache, last_chunk=False, n_timesteps=10):
        offset = cache["estimator_att_cache"].shape[4]
        mel, new_cache = official_chunk(token=token, spk=spk, cache=cache, last_chunk=last_chunk,
                                        n_timesteps=n_timesteps)
        calls.append({"codes": token[0].tolist(), "last_chunk": bool(last_chunk), "mel": mel.clone(),
                      "noise_offset": int(offset)})
        return mel, new_cache
    model.flow.inference_chunk = recording_chunk

    flow_cache, hift_cache = model.set_stream_cache(a.voice)
    flow_base, hift_base = copy.deepcopy(flow_cache), copy.deepcopy(hift_cache)
    prompt_tokens, _, spk_emb, prompt_mels, _ = model.cache
    lookahead = int(model.flow.pre_lookahead_len)

    def new_turn():
        model.stream_cache = copy.deepcopy(flow_base)
        model.hift_cache_dict = copy.deepcopy(hift_base)
        torch.manual_seed(a.vocoder_seed)
        return [4218] * 3

    def stream(codes, last=False):
        wav = model.stream(codes, prompt_wav=a.voice, last_chunk=last, return_waveform=True)
        calls[-1]["wav"] = torch.from_numpy(np.asarray(wav, dtype=np.float32))
        return wav

    units = json.loads(open(a.units).read())
    unit_wavs = []
    buffer = new_turn()
    for unit in units:
        buffer += list(unit["codes"])
        pieces = []
        if unit["turn_start"]:
            while len(buffer) >= lookahead + 5:
                n = min(25 + lookahead, len(buffer))
                pieces.append(stream(buffer[:n]))
                buffer = buffer[min(25, n - lookahead):]
        else:
            while len(buffer) >= 25 + lookahead:
                pieces.append(stream(buffer[:25 + lookahead]))
                buffer = buffer[25:]
        if unit["end_of_turn"] and buffer:
            pieces.append(stream(buffer, last=True))
            buffer = []
        wav = np.concatenate([np.asarray(w, np.float32).reshape(-1) for w in pieces]) if pieces \
            else np.zeros(0, np.float32)
        if not unit["end_of_turn"] and wav.shape[0] < 24000:
            wav = np.pad(wav, (24000 - wav.shape[0], 0))
        unit_wavs.append(wav)
        if unit["end_of_turn"]:
            buffer = new_turn()

    out = {
        "prompt_tokens": prompt_tokens.cpu().numpy(),
        "speaker_embedding": spk_emb.cpu().numpy(),
        "prompt_mel": prompt_mels.cpu().numpy(),
        "calls": np.array(len(calls)),
        "units": np.array(len(unit_wavs)),
        "noise_used": cfm.rand_noise[:, :, :max(c["noise_offset"] + c["mel"].shape[2] for c in calls)].numpy(),
    }
    for i, c in enumerate(calls):
        out[f"call{i}_codes"] = np.array(c["codes"], np.int64)
        out[f"call{i}_last"] = np.array(c["last_chunk"])
        out[f"call{i}_mel"] = c["mel"].cpu().numpy()
        out[f"call{i}_wav"] = c["wav"].numpy()
        out[f"call{i}_noise_offset"] = np.array(c["noise_offset"])
    for i, w in enumerate(unit_wavs):
        out[f"unit{i}_wav"] = w
    np.savez_compressed(a.out, **out)
    print(f"official token2wav: {len(calls)} calls, {len(unit_wavs)} units -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
