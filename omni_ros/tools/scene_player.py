"""omni_ros_scene_player: publish a generated scene on the camera and microphone topics.

Camera: a synthetic room with a ball rolling across (rgb8, `fps`). Microphone: silence with a
spoken request synthesized by espeak-ng at `request_at_sec`, published in 20 ms chunks at the
voice's own rate with a latched AudioInfo, stamped on the ROS clock, paced in real time.
Waits for omni_node's subscriptions before it starts, then plays for `duration_sec`;
`--namespace NS` publishes to /NS/camera/image_raw and /NS/mic/...; a player that sees no
subscriber within 5 s says so once, with the namespace and ROS_DOMAIN_ID, and keeps waiting.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image

from omni_ros.flow.audio import s16_to_float
from omni_ros.flow.types import INPUT_SAMPLE_RATE
from omni_ros.flow.units import NS_PER_S, samples_to_ns
from omni_ros.ros import audio_flavours, qos
from omni_ros.ros.runner import split_ros_args
from omni_ros.ros.conversions import ns_to_stamp, rgb_to_image
from omni_ros.tools.graph_hint import GraphWatch, add_namespace_argument, normalize_namespace

PROG = "omni_ros_scene_player"


def synthesize_speech(text: str, voice: str = "en-us", words_per_minute: int = 160):
    """(int16 samples, sample_rate) of `text` spoken by espeak-ng."""
    import soundfile

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng; "
                           "scripts/setup installs it)")
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(wav), text],
                       check=True, capture_output=True)
        samples, rate = soundfile.read(str(wav), dtype="int16")
    if samples.ndim > 1:
        samples = samples[:, 0]
    return samples, int(rate)


def synthesize_float(text: str, voice: str = "en-us",
                     sample_rate: int = INPUT_SAMPLE_RATE) -> np.ndarray:
    """`text` spoken by espeak-ng as float32 samples in [-1, 1] at `sample_rate`."""
    import soxr

    samples, rate = synthesize_speech(text, voice=voice)
    return soxr.resample(s16_to_float(samples), rate,
                         sample_rate).astype(np.float32)


def scene_frame(t_sec: float, width: int, height: int) -> np.ndarray:
    """A floor, a wall and a red ball rolling left to right (HxWx3 uint8 RGB)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[: height // 2] = (180, 190, 200)
    frame[height // 2:] = (110, 90, 70)
    radius = max(4, height // 10)
    cx = int((0.1 + 0.8 * ((t_sec / 8.0) % 1.0)) * width)
    cy = int(height * 0.7)
    ys, xs = np.ogrid[:height, :width]
    frame[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2] = (220, 30, 30)
    return frame


class ScenePlayer(Node):
    def __init__(self, options: argparse.Namespace) -> None:
        namespace = normalize_namespace(getattr(options, "namespace", "")) or "/"
        super().__init__("omni_scene_player", namespace=namespace)
        self.options = options
        self.image_publisher = self.create_publisher(Image, "camera/image_raw", qos.CAMERA)
        self.audio_publisher = self.create_publisher(audio_flavours.MIC_TYPE, "mic/audio_stamped",
                                                     qos.MIC_AUDIO)
        self.info_publisher = (None if audio_flavours.MIC_INFO_TYPE is None else   # mgonzs13
                               self.create_publisher(audio_flavours.MIC_INFO_TYPE,
                                                     "mic/audio_info", qos.AUDIO_INFO))
        speech, self.sample_rate = synthesize_speech(options.request)
        total = int(options.duration_sec * self.sample_rate)
        self.track = np.zeros(total, dtype=np.int16)
        start = int(options.request_at_sec * self.sample_rate)
        speech = speech[: max(0, total - start)]
        self.track[start:start + speech.shape[0]] = speech
        self.speech_span_sec = (options.request_at_sec,
                                options.request_at_sec + speech.shape[0] / self.sample_rate)
        self.chunk_samples = self.sample_rate * options.chunk_ms // 1000
        if self.info_publisher is not None:
            self.info_publisher.publish(audio_flavours.mic_info(self.sample_rate, 1, "S16LE"))

    def wait_for_subscribers(self, timeout_sec: float) -> bool:
        deadline = time.monotonic() + timeout_sec
        watch = GraphWatch(self, ["camera/image_raw", "mic/audio_stamped"], PROG,
                           peers="subscriber")
        while time.monotonic() < deadline:
            watch.poll()
            # omni_node itself, not just any subscriber (a bag recorder takes camera and mic
            # too): it publishes speech/audio_info from the moment it has a model
            if (self.audio_publisher.get_subscription_count() > 0
                    and self.image_publisher.get_subscription_count() > 0
                    and self.count_publishers(self.resolve_topic_name("speech/audio_info")) > 0):
                return True
            rclpy.spin_once(self, timeout_sec=0.1)
        return False

    def play(self) -> None:
        """Publish the scene in real time: audio chunks and frames as they fall due."""
        options = self.options
        t0_ros = self.get_clock().now().nanoseconds
        t0 = time.monotonic()
        next_chunk, next_frame = 0, 0
        frame_period = 1.0 / options.fps
        chunks = self.track.shape[0] // self.chunk_samples
        while next_chunk < chunks and rclpy.ok():
            elapsed = time.monotonic() - t0
            while next_chunk < chunks and (next_chunk + 1) * options.chunk_ms / 1000.0 <= elapsed:
                begin = next_chunk * self.chunk_samples
                message = audio_flavours.mic_message(
                    ns_to_stamp(t0_ros + samples_to_ns(begin, self.sample_rate)),
                    self.track[begin:begin + self.chunk_samples], self.sample_rate, 1, "mic")
                self.audio_publisher.publish(message)
                next_chunk += 1
            while next_frame * frame_period <= elapsed:
                stamp = t0_ros + int(next_frame * frame_period * NS_PER_S)
                self.image_publisher.publish(rgb_to_image(
                    scene_frame(next_frame * frame_period, options.width, options.height), "rgb8",
                    stamp, "camera"))
                next_frame += 1
            time.sleep(0.005)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_namespace_argument(parser)
    parser.add_argument("--duration-sec", type=float, default=20.0)
    parser.add_argument("--request", default="Hello robot. What do you see in front of you?")
    parser.add_argument("--request-at-sec", type=float, default=5.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--chunk-ms", type=int, default=20)
    parser.add_argument("--wait-sec", type=float, default=120.0,
                        help="how long to wait for omni_node's subscriptions")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    own_args, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    options = parse_args(own_args)
    rclpy.init(args=[sys.argv[0], *ros_args])
    try:
        player = ScenePlayer(options)
        if not player.wait_for_subscribers(options.wait_sec):
            topics = ", ".join(player.resolve_topic_name(t)
                               for t in ("camera/image_raw", "mic/audio_stamped"))
            print(f"[{PROG}] nobody subscribed to {topics} within {options.wait_sec:g} s; "
                  "is omni_node running in this namespace and ROS_DOMAIN_ID?", file=sys.stderr)
            return 1
        begin, end = player.speech_span_sec
        print(f"[omni_ros_scene_player] playing {options.duration_sec:.0f} s: frames at "
              f"{options.fps:g} fps, spoken request at {begin:.1f}-{end:.1f} s "
              f"({player.sample_rate} Hz)", flush=True)
        player.play()
        player.destroy_node()
    except KeyboardInterrupt:
        pass
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
