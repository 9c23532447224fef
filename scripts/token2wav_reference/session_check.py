"""The speech omni_node publishes, checked against the official waveform stage: a checkpoint whose
`assets/token2wav/` is random at `--size` runs OmniSession (the object omni_node drives) for
`--units` windows; the speech codes and turn boundaries each speaking unit handed to the waveform
stage are replayed through the official implementation (minicpmo-utils 1.0.6) with the checkpoint's
default voice and the same seeds, and every unit's speech is compared. Run by `run --session`.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from omni_ros.flow.types import UnitInput
from omni_ros.model.checkpoint import write_checkpoint
from omni_ros.model.loader import load_model
from omni_ros.session.options import SessionOptions
from omni_ros.session.session import OmniSession
from omni_ros.runtime.torch_compute import TorchCompute
from omni_ros.model.token2wav.assets import ASSET_DIR
from omni_ros.model.token2wav.model import write_random_assets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scene  # noqa: E402


def unit_input(i: int) -> UnitInput:
    g = np.random.default_rng(i)
    return UnitInput(window_index=i, epoch=0, start_ns=i * 10**9, end_ns=(i + 1) * 10**9,
                     image=g.integers(0, 255, (48, 64, 3), dtype=np.uint8), image_stamp_ns=None,
                     audio=(g.standard_normal(16000) * 0.02).astype(np.float32))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=("tiny", "released"), default="released")
    p.add_argument("--units", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--turn-every", type=int, default=4, help="end a turn every N units (0: never)")
    p.add_argument("--official-python", required=True)
    p.add_argument("--work", default=None)
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="t2w-session-"))
    ckpt = write_checkpoint(work / "checkpoint")
    shutil.rmtree(ckpt / ASSET_DIR)
    write_random_assets(ckpt / ASSET_DIR, size=a.size, seed=0)
    model = load_model(ckpt)
    session = OmniSession(TorchCompute(model), SessionOptions(force_listen_count=0, listen_prob_scale=0.02, seed=a.seed,
                                                      token2wav_steps=a.steps))
    # a random model seldom ends a turn: every `--turn-every` units its <|turn_eos|> logit is raised
    # so that turn ends (and the waveform stage's final flush) are part of the check
    turn_eos = session.special.turn_eos

    def head(hidden):
        logits = model.llm.lm_head(hidden).float()
        if a.turn_every and session.units_done % a.turn_every == a.turn_every - 1:
            logits[turn_eos] = logits.max() + 20.0
        return logits
    session.context.head = head
    pushes = []
    push = session.waveform.push

    def recording_push(codes, turn_start, end_of_turn):
        wav = push(codes, turn_start, end_of_turn)
        pushes.append({"codes": [int(c) for c in codes], "turn_start": bool(turn_start),
                       "end_of_turn": bool(end_of_turn), "wav": wav})
        return wav
    session.waveform.push = recording_push
    started = time.time()
    outputs = [session.run_unit(unit_input(i)) for i in range(a.units)]
    speaking = [o for o in outputs if not o.is_listen]
    print(f"session: {len(speaking)} speaking of {a.units} units, {sum(o.end_of_turn for o in speaking)} "
          f"turn ends, {time.time() - started:.1f} s")
    units_path = work / "units.json"
    units_path.write_text(json.dumps([{k: v for k, v in u.items() if k != "wav"} for u in pushes]))
    dims = scene.OFFICIAL_DIMS[a.size]
    dump = work / "official.npz"
    subprocess.run([a.official_python, str(Path(__file__).resolve().parent / "official_stream.py"),
                    "--assets", str(ckpt / ASSET_DIR), "--voice", str(model.default_voice),
                    "--units", str(units_path), "--steps", str(a.steps), "--noise-seed", str(a.seed),
                    "--vocoder-seed", str(a.seed), "--hift-channels", str(dims["hift_channels"]),
                    "--tokenizer-dims", dims["tokenizer_dims"], "--out", str(dump)], check=True)
    reference = np.load(dump)
    worst = 0.0
    for i, (pushed, out) in enumerate(zip(pushes, speaking)):
        official = reference[f"unit{i}_wav"].reshape(-1)
        peak = max(float(np.abs(official).max()), 1e-12)
        same_length = pushed["wav"].shape[0] == official.shape[0]
        diff = float(np.abs(pushed["wav"] - official).max()) / peak if same_length else float("inf")
        # what the node publishes: the unit's speech, padded with silence to a window at a turn's end
        published = out.speech[:official.shape[0]]
        rest = out.speech[official.shape[0]:]
        diff_published = float(np.abs(published - official).max()) / peak
        worst = max(worst, diff, diff_published, float(np.abs(rest).max(initial=0.0)) / peak)
        print(f"  unit {i}: {len(pushed['codes'])} codes, turn start {pushed['turn_start']}, end "
              f"{pushed['end_of_turn']}: {out.speech.shape[0]} samples published, official "
              f"{official.shape[0]}, max diff {diff_published:.3g} of peak")
    ok = len(pushes) == len(speaking) > 0 and worst <= 1e-4
    print(f"worst unit difference {worst:.3g} of peak: {'MATCH' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
