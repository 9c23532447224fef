"""What omni_node builds from its parameters: the model session (through a backend plugin) and
the barge-in detector."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping, Optional

from omni_ros.flow.bargein import BargeInDetector
from omni_ros.flow.bargein_record import BargeInRecorder
from omni_ros.flow.echo import make_echo_canceller
from omni_ros.flow.types import INPUT_SAMPLE_RATE, DuplexSession
from omni_ros.flow.vad import VoiceActivity
from omni_ros.ros.runner import StartupError
from omni_ros.runtime.registry import BackendError, BackendSettings, create_session


def session_from(s: Mapping) -> DuplexSession:
    """The backend's session for the checkpoint; StartupError with the fix when it cannot be.
    (The values themselves were checked when the parameters were declared.)"""
    if not s["model_path"]:
        raise StartupError("parameter model_path is empty: point it at a MiniCPM-o 4.5 "
                           "checkpoint folder, or write a tiny one with "
                           "`omni_ros_tiny_checkpoint DIR` and pass -p model_path:=DIR")
    try:
        return create_session(s["backend"], BackendSettings(
            model_path=s["model_path"], device=s["device"], dtype=s["dtype"],
            engine_dir=s["engine_dir"], session_options=dict(s)))
    except (BackendError, ValueError) as error:   # ValueError: a refused option or voice
        raise StartupError(str(error)) from error
    except Exception as error:  # noqa: BLE001 - a corrupt checkpoint must not end in a traceback
        raise StartupError(f"cannot load the model from {s['model_path']!r}: "
                           f"{type(error).__name__}: {error} (is the checkpoint complete "
                           f"and uncorrupted? re-download it, or write a tiny one with "
                           f"`omni_ros_tiny_checkpoint DIR`)") from error


def barge_in_from(s: Mapping, logger, node_name: str = "omni_node") -> Optional[BargeInDetector]:
    """The barge-in detector the parameters ask for, or None with barge_in off; recording what
    it is given when `barge_in_record_path` is set (StartupError when that cannot be written)."""
    if not s["barge_in"]:
        return None
    canceller = make_echo_canceller(s["echo_canceller"])
    logger.info(f"barge-in on: echo canceller {type(canceller).__name__}")
    kwargs = dict(threshold=s["barge_in_threshold"], min_speech_ms=s["barge_in_min_speech_ms"],
                  vad_gain_db=s["barge_in_vad_gain_db"], echo_delay_ms=s["echo_delay_ms"],
                  residual_gate_db=s["residual_echo_gate_db"])
    detector = BargeInDetector(VoiceActivity(), canceller, **kwargs)
    if s["barge_in_record_path"]:
        path = recording_path(s["barge_in_record_path"])
        header = dict(detector=kwargs, echo_canceller=s["echo_canceller"], node=node_name,
                      sample_rate=INPUT_SAMPLE_RATE)
        try:
            detector.recorder = BargeInRecorder(path, header, int(s["barge_in_record_max_mb"] * 1e6))
        except OSError as error:
            raise StartupError(f"barge_in_record_path: cannot write the barge-in recording "
                               f"{str(path)!r}: {error}") from error
        logger.info(f"barge-in recording to {path} (at most {s['barge_in_record_max_mb']:g} MB); "
                    f"replay it with `omni_ros_barge_in_replay {path}`")
    return detector


def recording_path(given: str) -> Path:
    """`given` itself, or a new file named by the time and process in it when it is a directory
    (an existing one, or a path ending in /): a node restarted after a fault does not overwrite
    the recording of the fault."""
    path = Path(given).expanduser()
    if path.is_dir() or given.endswith("/"):
        path.mkdir(parents=True, exist_ok=True)
        return path / f"barge_in_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.obr"
    return path
