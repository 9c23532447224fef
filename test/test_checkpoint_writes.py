"""Whole tiny checkpoints written again: byte for byte the same for a seed, and file modes that do
not depend on the umask. Slow (each writes a checkpoint, about 1.5 s)."""
import os

import pytest

from test_official_parity import _modes

pytestmark = pytest.mark.slow


def test_deterministic_for_seed(tiny_checkpoint, tmp_path):
    from omni_ros.tools.tiny_checkpoint import main

    assert main([str(tmp_path / "again"), "--seed", "0"]) == 0
    again = tmp_path / "again"
    files = sorted(p.relative_to(tiny_checkpoint) for p in tiny_checkpoint.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (tiny_checkpoint / f).read_bytes() == (again / f).read_bytes(), f


def test_file_modes_do_not_depend_on_the_umask(tmp_path):
    from omni_ros.model.checkpoint import write_checkpoint

    old = os.umask(0o077)
    try:
        folder = write_checkpoint(tmp_path / "private_umask", seed=3)
    finally:
        os.umask(old)
    modes = _modes(folder)
    assert {f: m for f, m in modes.items() if m != 0o644} == {}
