"""A checkpoint whose shards do not agree with its index is refused before any weight is read,
with the shard file and the index that lists it named: a truncated shard, a shard of another
checkpoint, a key no shard lists, a shard file the index lists but that is absent. And a CUDA
device asked of a torch without CUDA is refused in one line saying so."""
import json

import pytest
import torch

from omni_ros.model.checkpoint import plan_shards, write_weights
from omni_ros.model.config import OmniConfig
from omni_ros.model.loader import INDEX_NAME, CheckpointError, DeviceUnavailable, expected_keys, load_model
from test_model_checkpoint import _index, _shadow

pytestmark = pytest.mark.unit


def _shards(folder):
    return sorted(set(_index(folder)["weight_map"].values()))


def _refused(folder) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    message = str(e.value)
    assert "\n" not in message
    return message


def _replace(folder, shard, data: bytes) -> None:
    (folder / shard).unlink()                 # a symlink into the shared tiny checkpoint
    (folder / shard).write_bytes(data)


@pytest.mark.parametrize("keep", [0.5, 0.999, 4])
def test_a_truncated_shard_is_named_with_its_index(tiny_checkpoint, tmp_path, keep):
    """Cut in the data, at the very end, or inside the 8-byte length field."""
    shard = _shards(tiny_checkpoint)[0]
    d = _shadow(tiny_checkpoint, tmp_path / "truncated")
    data = (tiny_checkpoint / shard).read_bytes()
    _replace(d, shard, data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    message = _refused(d)
    assert str(d / shard) in message and str(d / INDEX_NAME) in message
    assert "truncated" in message


def test_a_shard_of_the_same_checkpoint_under_another_name_is_refused(tiny_checkpoint, tmp_path):
    first, second = _shards(tiny_checkpoint)[:2]
    d = _shadow(tiny_checkpoint, tmp_path / "swapped")
    (d / second).unlink()
    (d / second).symlink_to(tiny_checkpoint / first)
    message = _refused(d)
    assert str(d / second) in message and str(d / INDEX_NAME) in message
    assert "another checkpoint" in message
    some_key = sorted(k for k, v in _index(d)["weight_map"].items() if v == second)[0]
    assert some_key in message                # a key the index puts in that shard


def _foreign_shard(tmp_path, shapes) -> bytes:
    """The bytes of a one-shard checkpoint holding `shapes` (random values of another seed)."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    write_weights(foreign, plan_shards(shapes, torch.bfloat16, 1 << 40, min_shards=1), seed=7)
    return (foreign / "model-00001-of-00001.safetensors").read_bytes()


def test_a_shard_of_a_checkpoint_of_other_dimensions_is_refused(tiny_checkpoint, tmp_path):
    """Same tensor names, other shapes (an audio encoder with a wider FFN): refused naming the
    shard, the index and the mis-shaped keys."""
    shard = _shards(tiny_checkpoint)[0]
    keys = [k for k, v in _index(tiny_checkpoint)["weight_map"].items() if v == shard]
    other = OmniConfig.tiny()
    other.audio_config.encoder_ffn_dim *= 2
    other_shapes = expected_keys(other)
    d = _shadow(tiny_checkpoint, tmp_path / "other_dims")
    _replace(d, shard, _foreign_shard(tmp_path, {k: other_shapes[k] for k in keys}))
    message = _refused(d)
    assert str(d / shard) in message and str(d / INDEX_NAME) in message
    assert "mis-shaped keys: " in message
    assert "apm.layers.0.fc1.weight (512, 64) != expected (256, 64)" in message


def test_a_shard_holding_a_tensor_the_index_does_not_list_is_refused(tiny_checkpoint, tmp_path):
    shard = _shards(tiny_checkpoint)[0]
    shapes = expected_keys(OmniConfig.tiny())
    keys = [k for k, v in _index(tiny_checkpoint)["weight_map"].items() if v == shard]
    d = _shadow(tiny_checkpoint, tmp_path / "surplus")
    _replace(d, shard, _foreign_shard(tmp_path, {**{k: shapes[k] for k in keys}, "apm.extra.weight": (4, 4)}))
    message = _refused(d)
    assert str(d / shard) in message and str(d / INDEX_NAME) in message
    assert "holds apm.extra.weight (1), which the index does not list" in message
    assert "another checkpoint" in message


def test_a_key_no_shard_lists_is_named_with_the_index(tiny_checkpoint, tmp_path):
    d = _shadow(tiny_checkpoint, tmp_path / "unlisted")
    index = _index(d)
    del index["weight_map"]["llm.model.norm.weight"]
    (d / INDEX_NAME).write_text(json.dumps(index))
    message = _refused(d)
    assert str(d / INDEX_NAME) in message
    assert "missing keys: llm.model.norm.weight (1), which no shard lists" in message


def test_a_listed_shard_file_that_is_absent_is_named_with_the_index(tiny_checkpoint, tmp_path):
    shard = _shards(tiny_checkpoint)[-1]
    d = _shadow(tiny_checkpoint, tmp_path / "absent")
    (d / shard).unlink()
    message = _refused(d)
    assert f"weight shard {shard} is missing: {d / INDEX_NAME} lists it" in message
    assert "omni_ros_tiny_checkpoint" not in message   # not a reason to write a random checkpoint


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="this torch has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_says_so_in_one_line(tiny_checkpoint, device):
    from omni_ros.runtime.registry import BackendError, BackendSettings
    from omni_ros.runtime.torch_backend import TorchBackend

    with pytest.raises(DeviceUnavailable) as e:
        load_model(tiny_checkpoint, device=device)
    with pytest.raises(BackendError) as b:
        TorchBackend(BackendSettings(model_path=str(tiny_checkpoint), device=device)).create_session()
    for message in (str(e.value), str(b.value)):
        assert "\n" not in message and "has no CUDA" in message and f"'{device}'" in message
        assert "download" not in message and "checkpoint" not in message
