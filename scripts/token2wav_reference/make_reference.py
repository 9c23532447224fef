"""Write a random-weight token2wav folder, run the official implementation and omni_ros on the same
codes, voice and noise, and print how far apart they are (run by `run`, in omni_ros's venv)."""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scene  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=("tiny", "released"), default="tiny")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--official-python", required=True)
    p.add_argument("--work", default=None, help="folder for the assets (default: a temporary one)")
    p.add_argument("--save", default=None, help="copy the official dump here (the test fixture for tiny)")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix=f"t2w-{a.size}-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    files = scene.write_scene(work, a.size)
    print(f"assets ({a.size}) written to {files['assets']} in {time.time() - t0:.1f} s")
    dims = scene.OFFICIAL_DIMS[a.size]
    dump = work / "official.npz"
    t0 = time.time()
    subprocess.run([a.official_python, str(Path(__file__).resolve().parent / "official_stream.py"),
                    "--assets", str(files["assets"]), "--voice", str(files["voice"]), "--units", str(files["units"]),
                    "--steps", str(a.steps), "--noise-seed", str(scene.NOISE_SEED),
                    "--vocoder-seed", str(scene.VOCODER_SEED), "--hift-channels", str(dims["hift_channels"]),
                    "--tokenizer-dims", dims["tokenizer_dims"], "--out", str(dump)], check=True)
    official_s = time.time() - t0
    reference = dict(np.load(dump))
    t0 = time.time()
    ours = scene.run_omni_ros(files["assets"], files["voice"], scene.units(), steps=a.steps)
    ours_s = time.time() - t0
    result = scene.compare(reference, ours)
    print(f"official: {official_s:.1f} s, omni_ros: {ours_s:.1f} s for {int(reference['calls'])} calls "
          f"({a.size}, {a.steps} steps)")
    for k, v in result.items():
        print(f"  {k:20s} {v:.3g}")
    if a.save:
        keep = {k: v for k, v in reference.items() if not k.startswith("unit") and k != "noise_used"}
        np.savez_compressed(a.save, **keep)
        print(f"reference saved to {a.save} ({Path(a.save).stat().st_size / 1e6:.2f} MB)")
    ok = result["calls"] == 1 and result["prompt_tokens_equal"] == 1 and result["codes_equal"] == 1 \
        and result["mel"] <= 1e-4 and result["wav"] <= 1e-4
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
