"""benchmarks/gpu.py, the one-command GPU benchmark, kept from rotting on a CPU: its tiny-size run
produces the table, it refuses a missing GPU in one line, its random model is made by the
checkpoint writer's rules, and its static-cache decode variant computes what the eager path does."""
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _bench():
    """benchmarks/gpu.py as a module (registered, as its dataclasses need)."""
    if "gpu_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_bench"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_bench"]


def _table(text: str):
    """The markdown table of the last section: header cells and {row name: cells}."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header[1:], rows


def test_cpu_tiny_run_writes_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    # one thread: two-thread torch on a shared 2-core machine is several times slower, erratically
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--units", "3",
                           "--threads", "1", "--output", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "tiny size on cpu (bfloat16), 3 units (a CPU smoke run, not GPU figures)" in text
    assert "torch 2" in text and "(1 threads)" in text
    columns, rows = _table(text)
    assert columns == ["eager, 10 steps", "eager, 5 steps", "static, 10 steps", "static, 5 steps", "graphs", "compile"]
    bench = _bench()
    assert list(rows) == [name for name, _ in bench.ROWS]
    assert rows["units run (speaking)"] == ["3 (2)"] * 4 + ["skipped on cpu"] * 2
    for name, cells in rows.items():
        if name.startswith("units run") or name.startswith("peak memory"):
            continue
        for cell in cells[:4]:
            numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?|nan|inf", cell)]
            assert numbers and all(math.isfinite(v) for v in numbers), (name, cell)
        assert cells[4:] == ["-", "-"], name
    per_unit = {name: [float(c.split()[0]) for c in cells[:4]] for name, cells in rows.items()
                if not name.startswith(("units run", "peak memory"))}
    assert all(v > 0 for v in per_unit["LLM decode, ms per token (median)"])
    assert per_unit["TTS codes per speaking unit"] == [25.0] * 4          # one 1 s window of codes
    assert all(v > 0 for v in per_unit["waveform-stage RTF"])
    rebuilds = [[float(v) for v in c.split(" / ")]
                for c in rows["context rebuild for a new standing instruction: kept units / positions / ms"][:4]]
    assert all(units == 3 and positions > 3 * 10 and ms > 0 for units, positions, ms in rebuilds), rebuilds
    # the printed table is the written one
    assert "| LLM decode, ms per token (median) |" in done.stdout


def test_a_unit_of_the_wrong_length_dtype_or_values_fails_its_check():
    from omni_ros.flow.types import UnitOutput

    bench = _bench()
    recorder = bench.Recorder(torch.device("cpu"))
    window = np.zeros(24000, np.float32)
    bench.check_outputs("unit 0", recorder, UnitOutput(is_listen=False, speech=window))
    bench.check_outputs("unit 1", recorder, UnitOutput(is_listen=True))
    # a turn's last unit: its window, then the waveform stage's final flush
    bench.check_outputs("unit 2", recorder, UnitOutput(is_listen=False, speech=np.zeros(30720, np.float32),
                                                       end_of_turn=True))
    for out, message in [
        (UnitOutput(is_listen=False, speech=np.zeros(16000, np.float32)),
         "unit 3: speech is 16000 samples, not one 1 s window at 24000 Hz (24000 samples)"),
        (UnitOutput(is_listen=False, speech=np.zeros(30720, np.float32)), "speech is 30720 samples"),
        (UnitOutput(is_listen=False, speech=np.zeros(16000, np.float32), end_of_turn=True),
         "(24000 samples, or more at the end of a turn)"),
        (UnitOutput(is_listen=False, speech=np.zeros(24000)), "speech is float64 of shape (24000,), not float32"),
        (UnitOutput(is_listen=False, speech=np.zeros((1, 24000), np.float32)), "of shape (1, 24000), not float32 mono"),
        (UnitOutput(is_listen=False, speech=np.full(24000, np.nan, np.float32)), "NaN or infinite samples"),
        (UnitOutput(is_listen=True, speech=window), "a listening unit handed back 24000 samples of speech"),
    ]:
        with pytest.raises(bench.OutputCheckFailed, match=re.escape(message)):
            bench.check_outputs("unit 3", recorder, out)
    # the model's outputs: watched where they are made, reported at the next check, then forgotten
    recorder.watch("LLM logits", torch.tensor([0.0, 1.0]))
    recorder.watch("LLM logits", torch.tensor([float("inf"), 1.0]))
    recorder.watch("LLM hidden states", torch.ones(2, 4, dtype=torch.bfloat16))
    recorder.watch("LLM logits", None)
    with pytest.raises(bench.OutputCheckFailed, match=r"^unit 4: LLM logits not finite$"):
        bench.check_outputs("unit 4", recorder, UnitOutput(is_listen=False, speech=window))
    bench.check_outputs("unit 5", recorder, UnitOutput(is_listen=False, speech=window))


def test_non_finite_logits_fail_the_run_with_one_line(tmp_path, monkeypatch, capsys, one_thread):
    """In process at tiny size: from the second unit on, the LLM's logits hold an infinite value
    (one token's, so sampling goes on as before): the variant fails at that unit, one line on
    stderr says why, and main returns 1."""
    from omni_ros.session.session import OmniSession

    bench = _bench()
    llm_step, run_unit, warmup = bench.TorchCompute.llm_step, OmniSession.run_unit, OmniSession.warmup
    units = []                                  # the benchmark's units run (after the warm-up)
    warm = []

    def poisoned(self, embeds, position, cache, need_logits=True):
        hidden, logits = llm_step(self, embeds, position, cache, need_logits)
        if logits is not None and len(units) >= 2:
            logits = logits.clone()
            logits[..., 0] = float("-inf")
        return hidden, logits

    def counted(self, unit):
        if warm:
            units.append(unit.window_index)
        return run_unit(self, unit)

    def warmed(self):
        warmup(self)
        warm.append(True)

    monkeypatch.setattr(bench.TorchCompute, "llm_step", poisoned)
    monkeypatch.setattr(OmniSession, "run_unit", counted)
    monkeypatch.setattr(OmniSession, "warmup", warmed)
    out = tmp_path / "gpu.md"
    assert bench.main(["--device", "cpu", "--size", "tiny", "--units", "3", "--variants", "eager",
                       "--steps", "10", "--output", str(out)]) == 1
    assert units == [0, 1]
    why = "OutputCheckFailed: unit 1 (speaking): LLM logits not finite"
    assert f"| units run (speaking) | failed: {why} |" in out.read_text()
    assert capsys.readouterr().err.strip().splitlines() == [f"benchmarks/gpu.py: eager, 10 steps failed: {why}"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_in_one_line(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--output", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmarks/gpu.py: --device cuda needs an NVIDIA GPU"), done.stderr
    assert "--device cpu --size tiny" in lines[0]
    assert not out.exists()


def test_random_model_follows_the_writer_rules():
    from omni_ros.model.checkpoint import DECISION_ROW_SCALE, DECISION_TOKENS, INIT_STD, TTS_INIT_STD, size_config
    from omni_ros.model.loader import expected_keys
    from omni_ros.model.tokenizer import released_added_tokens

    config = size_config("tiny")
    model = _bench().random_model(config, torch.device("cpu"), torch.bfloat16, seed=3)
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_keys(config)
    assert all(v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all() for v in state.values())
    assert model.llm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(state["llm.model.norm.weight"], torch.ones_like(state["llm.model.norm.weight"]))
    assert not state["apm.layers.0.fc1.bias"].any()
    assert abs(state["llm.model.layers.0.mlp.up_proj.weight"].float().std() - INIT_STD) < 0.002
    assert abs(state["tts.model.layers.0.mlp.up_proj.weight"].float().std() - TTS_INIT_STD) < 0.01
    head = state["llm.lm_head.weight"].float()
    decision = [released_added_tokens()[t] for t in DECISION_TOKENS]
    ratio = head[decision].std() / head[:1000].std()
    assert abs(ratio - DECISION_ROW_SCALE) < 0.5
    g = state["tts.head_code.0.parametrizations.weight.original0"].float()
    v = state["tts.head_code.0.parametrizations.weight.original1"].float()
    assert torch.allclose(g[:, 0], v.norm(dim=1), rtol=0.01)
    # seeded: the same seed gives the same values, another seed others
    again = _bench().random_model(config, torch.device("cpu"), torch.bfloat16, seed=3).state_dict()
    other = _bench().random_model(config, torch.device("cpu"), torch.bfloat16, seed=4).state_dict()
    key = "llm.model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(again[key], state[key]) and not torch.equal(other[key], state[key])


def test_static_decoders_take_the_released_shapes():
    """The static-cache steps at released dimensions, on the meta device (shapes only, no memory):
    a prefill, a one-token step through its static inputs, a context cut, the speech decoder."""
    from omni_ros.model.config import OmniConfig
    from omni_ros.model.loader import build_model
    from omni_ros.runtime import graphs as G

    bench, meta, bf16 = _bench(), torch.device("meta"), torch.bfloat16
    config = OmniConfig.released()
    model = build_model(config, "meta").to(bf16)
    with torch.inference_mode():
        llm = bench.StaticDecoder(model.llm.model, G.llm_kv_shape(config, 4096),
                                  lambda h: model.llm.lm_head(h).float(), "static", bf16, meta)
        cache = llm.new_cache()
        hidden, logits = llm.step(torch.zeros(75, 4096, dtype=bf16, device=meta), 0, cache, True)
        assert hidden.shape == (75, 4096) and logits.shape == (config.vocab_size,) and logits.dtype == torch.float32
        hidden, logits = llm.step(torch.zeros(1, 4096, dtype=bf16, device=meta), 75, cache, True)
        assert hidden.shape == (1, 4096) and logits.shape == (config.vocab_size,) and cache.length == 76
        llm.drop_span(cache, 5, 15, *bench.rope_delta(config, 10))
        assert cache.get_seq_length() == 66
        with pytest.raises(RuntimeError, match="capacity 4096"):
            llm.step(torch.zeros(4031, 4096, dtype=bf16, device=meta), 66, cache, False)
        t = config.tts_config
        tts = bench.StaticDecoder(model.tts.model, G.tts_kv_shape(config, t.max_position_embeddings),
                                  lambda h: h.new_zeros(h.shape[0], t.num_audio_tokens).float(), "static", bf16, meta)
        cache = tts.new_cache()
        assert tts.step(torch.zeros(8, t.hidden_size, dtype=bf16, device=meta), 0, cache, True)[1].shape == (6562,)
        assert tts.step(torch.zeros(1, t.hidden_size, dtype=bf16, device=meta), 8, cache, True)[1].shape == (6562,)
        stale, fresh = cache, tts.new_cache()
        with pytest.raises(RuntimeError, match="one cache at a time"):
            tts.step(torch.zeros(1, t.hidden_size, dtype=bf16, device=meta), 9, stale, True)
        assert fresh.length == 0


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_static_decode_computes_what_eager_does(tmp_path, one_thread):
    """A session over the static-cache compute gives the eager session's tokens and speech (float32),
    across speech turns and the context cuts of max_context_units."""
    from omni_ros.model.token2wav.model import synthetic_voice
    from omni_ros.runtime.torch_compute import TorchCompute
    from omni_ros.session.options import SessionOptions
    from omni_ros.session.session import OmniSession

    bench = _bench()
    model = bench.build("tiny", torch.device("cpu"), torch.float32, 0, tmp_path)
    inputs = bench.unit_inputs(7, seed=1)
    runs = []
    for compute in (TorchCompute(model), bench.StaticDecodeCompute(model, "static", llm_capacity=1024)):
        session = OmniSession(compute, SessionOptions(seed=5, force_listen_count=0, max_context_units=2,
                                                      reference_voice_samples=synthetic_voice(2.0)))
        trace, outs = [], []
        session.context.trace = trace
        for k, unit in enumerate(inputs):
            if k == 4:
                session.interrupt()
            session.decision_override = None if k in (2, 6) else k % 4 != 0
            outs.append(session.run_unit(unit))
            assert session.cache_length == session.context.position
        runs.append((trace, outs, session.cache_length))
    (trace_a, outs_a, len_a), (trace_b, outs_b, len_b) = runs
    assert trace_a == trace_b and len_a == len_b
    assert sum(not o.is_listen for o in outs_a) >= 4
    for a, b in zip(outs_a, outs_b):
        assert (a.is_listen, a.text, a.end_of_turn) == (b.is_listen, b.text, b.end_of_turn)
        assert a.speech.shape == b.speech.shape
        np.testing.assert_allclose(a.speech, b.speech, atol=1e-4)
        assert abs(a.speak_probability - b.speak_probability) < 1e-4
