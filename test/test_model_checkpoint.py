"""Tiny checkpoint writer, strict loader and released key layout of omni_ros.model."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from omni_ros.model.config import OmniConfig
from omni_ros.model.loader import INDEX_NAME, CheckpointError, expected_keys, load_model

pytestmark = pytest.mark.unit

PREFIXES = ("llm.", "vpm.", "resampler.", "apm.", "audio_projection_layer.", "tts.")


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX_NAME).read_text())


def _shadow(src: Path, dst: Path) -> Path:
    """A copy of `src` whose weight shards are symlinks (cheap to modify one file)."""
    dst.mkdir()
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            (dst / p.name).symlink_to(p)
        elif p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            shutil.copy(p, dst / p.name)
    return dst


def _norm_layers(name: str) -> str:
    return re.sub(r"\.layers\.\d+\.", ".layers.N.", name)


# --- released layout -------------------------------------------------------------------------

RELEASED_SHAPES = {
    "llm.model.embed_tokens.weight": (151748, 4096),
    "llm.lm_head.weight": (151748, 4096),
    "llm.model.layers.35.self_attn.k_proj.weight": (1024, 4096),
    "llm.model.layers.0.self_attn.q_norm.weight": (128,),
    "llm.model.layers.0.mlp.gate_proj.weight": (12288, 4096),
    "llm.model.norm.weight": (4096,),
    "vpm.embeddings.patch_embedding.weight": (1152, 3, 14, 14),
    "vpm.embeddings.position_embedding.weight": (4900, 1152),
    "vpm.encoder.layers.25.mlp.fc1.weight": (4304, 1152),
    "vpm.encoder.layers.0.layer_norm1.weight": (1152,),
    "vpm.post_layernorm.weight": (1152,),
    "resampler.query": (64, 4096),
    "resampler.proj": (4096, 4096),
    "resampler.kv_proj.weight": (4096, 1152),
    "resampler.attn.in_proj_weight": (12288, 4096),
    "resampler.attn.in_proj_bias": (12288,),
    "resampler.attn.out_proj.weight": (4096, 4096),
    "resampler.ln_q.weight": (4096,),
    "resampler.ln_kv.bias": (4096,),
    "resampler.ln_post.weight": (4096,),
    "apm.conv1.weight": (1024, 80, 3),
    "apm.conv2.weight": (1024, 1024, 3),
    "apm.embed_positions.weight": (1500, 1024),
    "apm.layers.23.self_attn.q_proj.bias": (1024,),
    "apm.layers.0.fc1.weight": (4096, 1024),
    "apm.layers.0.self_attn_layer_norm.weight": (1024,),
    "apm.layers.0.final_layer_norm.bias": (1024,),
    "apm.layer_norm.weight": (1024,),
    "audio_projection_layer.linear1.weight": (4096, 1024),
    "audio_projection_layer.linear2.weight": (4096, 4096),
    "tts.emb_text.weight": (152064, 768),
    "tts.model.embed_tokens.weight": (32000, 768),
    "tts.model.layers.19.self_attn.o_proj.weight": (768, 768),
    "tts.model.layers.0.mlp.down_proj.weight": (768, 3072),
    "tts.model.norm.weight": (768,),
    "tts.projector_spk.linear1.weight": (768, 4096),
    "tts.projector_semantic.linear2.bias": (768,),
    "tts.emb_code.0.weight": (6562, 768),
    "tts.head_code.0.parametrizations.weight.original0": (6562, 1),
    "tts.head_code.0.parametrizations.weight.original1": (6562, 768),
}


def _layer_count(keys, prefix):
    return len({m.group(1) for k in keys for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m})


def test_released_expected_keys():
    keys = expected_keys(OmniConfig.released())
    for name, shape in RELEASED_SHAPES.items():
        assert keys.get(name) == shape, name
    assert _layer_count(keys, "llm.model.layers.") == 36
    assert _layer_count(keys, "vpm.encoder.layers.") == 26
    assert _layer_count(keys, "apm.layers.") == 24
    assert _layer_count(keys, "tts.model.layers.") == 20
    assert all(k.startswith(PREFIXES) for k in keys)
    assert not any("k_proj.bias" in k for k in keys if k.startswith("apm."))
    assert not any(k.startswith("vpm.head") or "rotary" in k or "avg_pooler" in k for k in keys)
    assert "resampler.attn.bias_k" not in keys
    assert 9.0e9 < sum(torch.Size(s).numel() for s in keys.values()) < 9.6e9


def test_config_roundtrip_keeps_unknown_fields(tmp_path):
    data = OmniConfig.released().to_dict()
    data["some_future_field"] = {"a": 1}
    data["tts_config"]["another"] = 3
    data["tts_config"]["num_layers"] = data["tts_config"].pop("num_hidden_layers")  # older spelling
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = OmniConfig.from_json_file(tmp_path / "config.json")
    assert cfg.tts_config.num_hidden_layers == 20
    out = cfg.to_dict()
    assert out["some_future_field"] == {"a": 1} and out["tts_config"]["another"] == 3
    assert cfg.model_type == "minicpmo" and cfg.tie_word_embeddings is False


# --- tiny checkpoint -------------------------------------------------------------------------

def test_tiny_checkpoint_layout(tiny_checkpoint):
    files = {p.relative_to(tiny_checkpoint).as_posix() for p in tiny_checkpoint.rglob("*") if p.is_file()}
    for f in ("config.json", INDEX_NAME, "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "preprocessor_config.json",
              "assets/token2wav/flow.yaml", "assets/token2wav/flow.pt", "assets/token2wav/hift.pt",
              "assets/token2wav/campplus.onnx", "assets/token2wav/speech_tokenizer_v2_25hz.onnx",
              "assets/ref_audio/ref_minicpm_signature.wav"):
        assert f in files
    shards = sorted(set(_index(tiny_checkpoint)["weight_map"].values()))
    assert len(shards) >= 2 and all(s in files for s in shards)
    size = sum((tiny_checkpoint / f).stat().st_size for f in files)
    assert size < 150e6
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["model_type"] == "minicpmo" and cfg["vocab_size"] == 151748
    assert cfg["tts_config"]["num_text_tokens"] == 152064


def test_tiny_keys_match_released_names(tiny_checkpoint):
    keys = set(_index(tiny_checkpoint)["weight_map"])
    assert all(k.startswith(PREFIXES) for k in keys)
    tiny = expected_keys(OmniConfig.from_json_file(tiny_checkpoint / "config.json"))
    assert keys == set(tiny)
    released = expected_keys(OmniConfig.released())
    assert {_norm_layers(k) for k in keys} == {_norm_layers(k) for k in released}


def test_tiny_loads_strictly(tiny_model):
    cfg = tiny_model.config
    assert tiny_model.llm.lm_head.weight.shape == (151748, cfg.hidden_size)
    assert tiny_model.tts.emb_text.weight.shape[0] == 152064
    assert all(torch.isfinite(p).all() for p in tiny_model.parameters())
    assert tiny_model.llm.lm_head.weight.dtype == torch.float32
    inv = tiny_model.llm.model.rotary_emb.inv_freq
    assert inv.dtype == torch.float32 and torch.isfinite(inv).all() and inv[0] == 1.0


def test_tiny_tokenizer_special_ids(tiny_model):
    from omni_ros.model.tokenizer import released_added_tokens

    tok = tiny_model.tokenizer
    assert len(tok) == 151748
    for text, i in released_added_tokens().items():
        assert tok.convert_tokens_to_ids(text) == i, text
        assert tok.encode(text, add_special_tokens=False) == [i]
    ids = tok.encode("hello <unit> robot<|listen|>", add_special_tokens=False)
    assert tiny_model.special.unit_start in ids and tiny_model.special.listen in ids


def test_tokenizer_loads_with_autotokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    assert len(tok) == 151748 and tok.convert_tokens_to_ids("<|speak|>") == 151706


# --- errors ----------------------------------------------------------------------------------

def test_missing_folder_and_files(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="omni_ros_tiny_checkpoint"):
        load_model(tmp_path / "nowhere")
    for rel in ("config.json", INDEX_NAME, "tokenizer.json"):
        d = _shadow(tiny_checkpoint, tmp_path / rel.replace("/", "_"))
        (d / rel).unlink()
        with pytest.raises(CheckpointError, match="omni_ros_tiny_checkpoint") as e:
            load_model(d)
        assert Path(rel).name in str(e.value)
    d = _shadow(tiny_checkpoint, tmp_path / "hift")
    (d / "assets/token2wav/hift.pt").unlink()
    with pytest.raises(CheckpointError, match=r"missing hift\.pt"):
        load_model(d)


def test_missing_and_corrupt_shard(tiny_checkpoint, tmp_path):
    shard = sorted(set(_index(tiny_checkpoint)["weight_map"].values()))[-1]
    d = _shadow(tiny_checkpoint, tmp_path / "missing")
    (d / shard).unlink()
    with pytest.raises(CheckpointError, match=shard):
        load_model(d)
    d = _shadow(tiny_checkpoint, tmp_path / "corrupt")
    data = (tiny_checkpoint / shard).read_bytes()
    (d / shard).unlink()
    (d / shard).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=shard):
        load_model(d)


def _with_index_change(tiny_checkpoint, d, tensors, drop=()):
    index = _index(d)
    if tensors:
        save_file(tensors, str(d / "model-extra.safetensors"))
        index["weight_map"].update({k: "model-extra.safetensors" for k in tensors})
    for k in drop:
        index["weight_map"].pop(k)
    (d / INDEX_NAME).write_text(json.dumps(index))


def test_extra_missing_misshaped_keys(tiny_checkpoint, tmp_path):
    d = _shadow(tiny_checkpoint, tmp_path / "extra")
    _with_index_change(tiny_checkpoint, d, {"llm.model.bogus.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: llm\.model\.bogus\.weight"):
        load_model(d)

    d = _shadow(tiny_checkpoint, tmp_path / "missing")
    _with_index_change(tiny_checkpoint, d, {}, drop=["resampler.proj"])
    with pytest.raises(CheckpointError, match=r"missing keys: resampler\.proj"):
        load_model(d)

    d = _shadow(tiny_checkpoint, tmp_path / "shape")
    _with_index_change(tiny_checkpoint, d, {"apm.layer_norm.weight": torch.ones(65)})
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: apm\.layer_norm\.weight"):
        load_model(d)


def test_a_folder_of_the_earlier_test_decoder_is_refused_with_a_way_out(tiny_checkpoint, tmp_path):
    """assets/token2wav of an earlier omni_ros test checkpoint (not the released layout) is named as
    such, with the command that writes a current one."""
    d = _shadow(tiny_checkpoint, tmp_path / "old_assets")
    t2w = d / "assets" / "token2wav"
    shutil.rmtree(t2w)
    t2w.mkdir()
    (t2w / "config.json").write_text("{}\n")
    (t2w / "token2wav.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="omni_ros_tiny_checkpoint"):
        load_model(d)

# --- the writer's plan: tiny written, released planned ---------------------------------------

def _released_plan():
    from omni_ros.model.checkpoint import SHARD_BYTES, plan_checkpoint

    return plan_checkpoint(OmniConfig.released(), torch.bfloat16, SHARD_BYTES["released"])


def _files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_tiny_writer_follows_its_plan(tiny_checkpoint, tmp_path):
    """The tiny folder holds exactly the planned files; each shard has the planned header and length,
    and safetensors' own writer would have written the same bytes."""
    from safetensors.torch import load_file, save_file

    from omni_ros.model.checkpoint import plan_checkpoint
    from omni_ros.model.loader import read_shard_header

    plan = plan_checkpoint(OmniConfig.tiny())
    assert _files(tiny_checkpoint) == set(plan.files())
    assert _index(tiny_checkpoint) == plan.index()
    for shard in plan.shards:
        data = (tiny_checkpoint / shard.file).read_bytes()
        assert len(data) == shard.file_bytes
        assert data[8:8 + len(shard.header())] == shard.header()
        assert set(read_shard_header(tiny_checkpoint / shard.file).values()) == \
            {("BF16", t.shape) for t in shard.tensors}
    first = tiny_checkpoint / plan.shards[0].file
    save_file(load_file(str(first)), str(tmp_path / "again.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "again.safetensors").read_bytes() == first.read_bytes()


def test_tiny_written_like_the_released_plan(tiny_checkpoint):
    """Same key names (layer counts aside), dtype and file layout at both sizes; the released plan's
    keys and shapes are those of the released module tree."""
    from test_model_layout import _released_from_tree

    plan = _released_plan()
    released = {t.name: t.shape for t in plan.all_tensors()}
    assert released == _released_from_tree()
    tiny = {k: v for shard in set(_index(tiny_checkpoint)["weight_map"].values())
            for k, v in _shard_dtypes(tiny_checkpoint / shard).items()}
    assert {_norm_layers(k) for k in tiny} == {_norm_layers(k) for k in released}
    assert set(tiny.values()) == {"BF16"} and {t.dtype for t in plan.all_tensors()} == {torch.bfloat16}
    shard_name = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
    tiny_files = _files(tiny_checkpoint)
    assert {f for f in tiny_files if not shard_name.fullmatch(f)} == \
        {f for f in plan.files() if not shard_name.fullmatch(f)}
    for files in (tiny_files, set(plan.files())):
        shards = sorted(shard_name.fullmatch(f).groups() for f in files if shard_name.fullmatch(f))
        assert shards == [(f"{i + 1:05d}", f"{len(shards):05d}") for i in range(len(shards))]


def _shard_dtypes(path):
    from omni_ros.model.loader import read_shard_header

    return {k: dtype for k, (dtype, _) in read_shard_header(path).items()}


def test_released_plan_shapes_and_shard_boundaries():
    """Checked without writing a byte: 18.8 GB of bf16 in shards of at most 5 GB, cut greedily in key
    order, each tensor once, byte ranges back to back."""
    plan = _released_plan()
    tensors = list(plan.all_tensors())
    assert [t.name for t in tensors] == sorted(t.name for t in tensors)
    assert len({t.name for t in tensors}) == len(tensors)
    assert plan.total_size == 2 * sum(torch.Size(t.shape).numel() for t in tensors)
    assert 18.0e9 < plan.total_size < 19.2e9
    assert len(plan.shards) == 4
    limit = 5 * 10 ** 9
    for i, shard in enumerate(plan.shards):
        assert shard.file == f"model-{i + 1:05d}-of-00004.safetensors"
        ends = [0] + [t.offsets[1] for t in shard.tensors]
        assert [t.offsets for t in shard.tensors] == list(zip(ends[:-1], ends[1:]))
        assert all(t.nbytes == 2 * torch.Size(t.shape).numel() for t in shard.tensors)
        assert shard.data_bytes <= limit
        if i + 1 < len(plan.shards):                  # the next tensor would not have fitted
            assert shard.data_bytes + plan.shards[i + 1].tensors[0].nbytes > limit
        assert len(shard.header()) % 8 == 0 and shard.file_bytes == 8 + len(shard.header()) + shard.data_bytes
    assert plan.index()["metadata"]["total_size"] == plan.total_size
    assert plan.total_size == 18_713_096_324
    assert [(s.tensors[0].name, s.tensors[-1].name) for s in plan.shards] == [
        ("apm.conv1.bias", "llm.model.layers.12.self_attn.k_proj.weight"),
        ("llm.model.layers.12.self_attn.o_proj.weight", "llm.model.layers.24.mlp.gate_proj.weight"),
        ("llm.model.layers.24.mlp.up_proj.weight", "llm.model.layers.4.mlp.down_proj.weight"),
        ("llm.model.layers.4.mlp.gate_proj.weight", "vpm.post_layernorm.weight")]


def test_plan_option_writes_nothing(tmp_path, capsys):
    from omni_ros.tools.tiny_checkpoint import main

    assert main([str(tmp_path / "released"), "--size", "released", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "model-00004-of-00004.safetensors" in out and "in 4 shards" in out
    assert not (tmp_path / "released").exists()


def test_drawing_in_row_blocks_draws_the_same_values(tiny_checkpoint, tmp_path):
    """Large tensors are drawn in blocks of rows: whatever the block size, the same values (so the
    released size is streamed without changing what a seed means)."""
    from omni_ros.model.checkpoint import RandomWeights, _row_chunks, plan_checkpoint, write_weights

    for shape in [(961, 1), (1000, 3), (40, 100)]:
        whole = torch.cat(list(RandomWeights({"a.weight": shape}, 3, 1 << 30).blocks("a.weight")))
        pieces = list(RandomWeights({"a.weight": shape}, 3, 64).blocks("a.weight"))
        assert len(pieces) > 1 and torch.equal(torch.cat(pieces), whole), shape
        assert all(p.numel() % 16 == 0 for p in pieces[:-1]) and pieces[-1].numel() >= 16
    assert list(_row_chunks((961, 1), 64))[-1] == (896, 961)
    write_weights(tmp_path, plan_checkpoint(OmniConfig.tiny()), seed=0, chunk_elements=4096)
    for shard in sorted(set(_index(tiny_checkpoint)["weight_map"].values())):
        assert (tmp_path / shard).read_bytes() == (tiny_checkpoint / shard).read_bytes(), shard


def test_bf16_load_maps_the_shards_instead_of_copying(tiny_checkpoint):
    """dtype bfloat16 on the CPU (the stored dtype): the weights are views of the memory-mapped
    shard files; the load time is recorded."""
    import os

    model = load_model(tiny_checkpoint, device="cpu", dtype="bfloat16")
    real = os.path.realpath(tiny_checkpoint)
    mapped = []
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            if line.rstrip().endswith(".safetensors") and real in line:
                lo, hi = line.split()[0].split("-")
                mapped.append((int(lo, 16), int(hi, 16)))
    listed = _index(tiny_checkpoint)["weight_map"]
    weights = {k: w for k, w in model.named_parameters() if not k.startswith("token2wav.")}
    assert set(weights) == set(listed)
    outside = [k for k, w in weights.items() if not any(lo <= w.data_ptr() < hi for lo, hi in mapped)]
    assert not outside, outside[:5]
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    assert 0 < model.load_seconds < 120
    inv = model.llm.model.rotary_emb.inv_freq
    assert inv.dtype == torch.float32 and inv.device.type == "cpu" and inv[0] == 1.0
