"""The real check of the vllm_omni backend: omni_ros's client against a real `vllm-omni serve` of
MiniCPM-o 4.5 (released weights, or a released-size random folder) on a GPU host.

    # on the GPU host (vllm-omni 0.30.0):
    vllm-omni serve openbmb/MiniCPM-o-4_5 --deploy-config <vllm_omni>/deploy/minicpmo_4_5.yaml \\
        --port 8000 --api-key "$KEY"
    # here:
    VLLM_API_KEY=... python benchmarks/vllm_omni_check.py --url ws://gpu-host:8000/v1/duplex \\
        --api-key-env VLLM_API_KEY --model-path checkpoints/tiny --units 30 [--sessions 4]

Runs `--sessions` robots' sessions at once (threads), each `--units` one-second units in real
time (a spoken request made with espeak-ng, then silence; the scene player's camera frames),
and reports per session: listen/speak string, text, round trip per unit (median, p95, max), units
whose answer came after their window, failures, bytes sent per unit; it fails (exit 1) when a
speaking unit's speech is not 24000 samples (more at a turn's end) or a unit fails. `--model-path`
is only read for its default voice (or pass --reference-voice). Then run the whole graph:
`omni_ros_bringup --model-path DIR --param backend:=vllm_omni --param vllm_omni_url:=... ` and
`omni_ros_recorder --duration-sec 60`.

Not run in omni_ros's CI: vllm-omni needs a GPU and its wheels (it has no CPU platform).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np

from omni_ros.flow.types import UnitInput
from omni_ros.runtime.registry import BackendSettings, create_session
from omni_ros.tools.scene_player import scene_frame, synthesize_float


def run_robot(index: int, args, results: dict) -> None:
    options = {"vllm_omni_url": args.url, "vllm_omni_api_key_env": args.api_key_env or "",
               "vllm_omni_ca_file": args.ca_file or "", "vllm_omni_unit_timeout_sec": args.unit_timeout,
               "reference_voice": args.reference_voice or "", "force_listen_count": 3,
               "standing_instruction": "Warn people nearby about hazards you see.", "window_sec": 1.0}
    session = create_session("vllm_omni", BackendSettings(model_path=args.model_path, session_options=options))
    request = synthesize_float("Hello robot. What do you see in front of you?")
    audio = np.zeros(args.units * 16000, np.float32)
    audio[2 * 16000:2 * 16000 + request.shape[0]] = request[: audio.shape[0] - 2 * 16000]
    marks, texts, rtts, failures, bad = [], [], [], [], []
    start = time.monotonic()
    for i in range(args.units):
        due = start + i + 1.0
        time.sleep(max(0.0, due - time.monotonic()))
        unit = UnitInput(window_index=i, epoch=0, start_ns=0, end_ns=0,
                         image=scene_frame(float(i), 640, 480), image_stamp_ns=i,
                         audio=audio[i * 16000:(i + 1) * 16000])
        t0 = time.monotonic()
        try:
            out = session.run_unit(unit)
        except Exception as error:  # noqa: BLE001 - reported
            failures.append(f"unit {i}: {type(error).__name__}: {error}")
            marks.append("F")
            continue
        rtts.append((time.monotonic() - t0) * 1000.0)
        marks.append("L" if out.is_listen else "S")
        if not out.is_listen:
            texts.append(out.text)
            if out.speech.shape[0] < 24000 or (not out.end_of_turn and out.speech.shape[0] != 24000):
                bad.append(f"unit {i}: {out.speech.shape[0]} samples")
    values = session.diagnostic_values()
    session.close()
    results[index] = {"marks": "".join(marks), "text": "|".join(texts), "rtts": rtts, "failures": failures,
                      "bad": bad, "values": values}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key-env")
    parser.add_argument("--ca-file")
    parser.add_argument("--model-path", default="checkpoints/tiny")
    parser.add_argument("--reference-voice")
    parser.add_argument("--units", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--unit-timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    results: dict = {}
    threads = [threading.Thread(target=run_robot, args=(i, args, results)) for i in range(args.sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = len(results) == args.sessions
    for i in range(args.sessions):
        r = results.get(i)
        if r is None:
            print(f"robot {i}: did not finish (see the traceback above)")
            continue
        rtts = sorted(r["rtts"]) or [0.0]
        p95 = rtts[min(len(rtts) - 1, int(0.95 * len(rtts)))]
        v = r["values"]
        print(f"robot {i}: {r['marks']}\n  text {r['text'][:160]!r}\n  round trip ms: median "
              f"{statistics.median(rtts):.0f}, p95 {p95:.0f}, max {rtts[-1]:.0f}; late units "
              f"{v.get('server_units_late', 0)}, failed {len(r['failures'])}; bytes sent per unit "
              f"{v.get('server_bytes_sent', 0) / max(1, v.get('server_units_sent', 1)):.0f}")
        for line in r["failures"][:5] + r["bad"][:5]:
            print("  " + line)
        ok = ok and not r["failures"] and not r["bad"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
