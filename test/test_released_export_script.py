"""benchmarks/released_export.py on the tiny checkpoint (the same code the released folder goes
through): every default graph, the waveform stage's (t2w_*) included, exported, checked, and run in
onnxruntime close to torch."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_every_default_graph_exports_and_runs_close_to_torch(tiny_checkpoint, tmp_path, precision,
                                                             tolerance):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "released_export.py"),
                             str(tiny_checkpoint), "--out", str(tmp_path / "onnx"),
                             "--precision", precision],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "graph" not in line]
    names = [row.split("|")[1].strip() for row in rows]
    waveform = ["t2w_encoder", "t2w_encoder_last", "t2w_estimator_step", "t2w_vocoder", "t2w_speaker"]
    assert names == ["vision", "audio", "tts_condition", "tts_code_embed", "tts_step", "embed_tokens",
                     "lm_head"] + (["llm_step"] if precision == "fp16" else []) + waveform, result.stdout
    for row in rows:
        assert "failed" not in row, row
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[4]) < tolerance, row
        if cells[0] in waveform:                  # the waveform stage is float32 in the checkpoint
            assert cells[5] == "float32" and cells[1].endswith("GB" if precision == "fp32" else "(external data)"), row
    vocoder = [r for r in rows if r.split("|")[1].strip() == "t2w_vocoder"][0]
    assert float(vocoder.split("|")[5]) < 1e-4, vocoder  # float32 in a float16 export too
    assert not list((tmp_path / "onnx").glob("*.onnx")), "one graph's files at a time, removed after"
    assert re.search(r"loaded in [0-9.]+ s", result.stdout)
