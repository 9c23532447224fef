"""Across machines: the robot (scene player and a recorder) in one network namespace, the "GPU
host" (omni_flow_clock and omni_node) in another, joined by a veth pair with 10.200.x.x addresses
made for this test. DDS runs over UDP only (no shared memory); discovery across the link with
ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET, once by multicast and once, on a link without multicast, by
ROS_STATIC_PEERS, as docs/multi_machine.md describes.

Skipped, with the reason, where network namespaces cannot be made (not root, no `ip`, no
permission). The namespaces and the link are removed in a finally.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graph import REPO, stop

pytestmark = pytest.mark.dds

WINDOW_SEC = 0.5
PLAY_SEC = 5.0


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


class NetnsPair:
    """Two network namespaces of this test's own, one veth between them."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        subnet = 1 + os.getpid() % 250
        self.robot, self.host = f"omr{tag}r", f"omr{tag}h"
        self.robot_ip, self.host_ip = f"10.200.{subnet}.1", f"10.200.{subnet}.2"
        self.robot_if, self.host_if = f"omr{tag}r0", f"omr{tag}h0"
        self.made = []

    def create(self, multicast: bool = True) -> None:
        for ns in (self.robot, self.host):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.robot, "link", "add", self.robot_if, "type", "veth", "peer", "name",
            self.host_if, "netns", self.host)
        ends = ((self.robot, self.robot_if, self.robot_ip), (self.host, self.host_if, self.host_ip))
        for ns, link, address in ends:
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", ns, "link", "set", link, "up", "multicast", "on")
            # DDS discovery multicast (239.255.0.1) crosses the link, or (a network that carries
            # no multicast, like most Wi-Fi and VPNs) stays on this side.
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", link if multicast else "lo")
        # Start nodes only once the link is up, with the neighbours known: discovery packets
        # sent into a link still coming up are lost, and unicast-only discovery then stalls.
        deadline = time.monotonic() + 10
        while not all(self._is_up(ns, link) for ns, link, _ in ends):
            if time.monotonic() > deadline:
                raise RuntimeError("the veth link did not come up")
            time.sleep(0.05)
        for (ns, link, _), (peer_ns, peer_link, peer_ip) in zip(ends, reversed(ends)):
            mac = json.loads(_ip("-n", peer_ns, "-j", "link", "show", peer_link).stdout)[0]["address"]
            _ip("-n", ns, "neigh", "replace", peer_ip, "lladdr", mac, "dev", link,
                "nud", "permanent")

    @staticmethod
    def _is_up(ns: str, link: str) -> bool:
        info = json.loads(_ip("-n", ns, "-j", "link", "show", link).stdout)[0]
        return info.get("operstate") == "UP"

    def bytes_sent(self, ns: str, link: str) -> int:
        out = _ip("-n", ns, "-j", "-s", "link", "show", link).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])

    def remove(self) -> None:
        for ns in reversed(self.made):
            _ip("netns", "del", ns, check=False)
        self.made.clear()


@pytest.fixture(params=["multicast", "static_peers"])
def netns_pair(request):
    """multicast: discovery by SUBNET multicast alone; static_peers: multicast stays on each
    side (like most Wi-Fi and VPNs), discovery across by ROS_STATIC_PEERS alone."""
    if sys.platform != "linux":
        pytest.skip("network namespaces are Linux only")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root (CAP_NET_ADMIN)")
    if shutil.which("espeak-ng") is None:
        pytest.skip("the scene player needs espeak-ng")
    pair = NetnsPair()
    pair.discovery = request.param
    try:
        try:
            pair.create(multicast=request.param == "multicast")
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot make network namespaces here: {' '.join(error.cmd)}: "
                        f"{error.stderr.strip()}")
        yield pair
    finally:
        pair.remove()


def _env(peer_ip: str, discovery: str) -> dict:
    env = os.environ.copy()
    env["ROS_DOMAIN_ID"] = str(20 + (os.getpid() + 7) % 80)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    if discovery == "static_peers":
        env["ROS_STATIC_PEERS"] = peer_ip
    else:
        env.pop("ROS_STATIC_PEERS", None)
    env["FASTDDS_BUILTIN_TRANSPORTS"] = "UDPv4"   # no shared memory: everything over the link
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _in_netns(ns: str, module: str, args, env, log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
                            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)   # a process group: nothing outlives the test


def test_sensors_on_the_robot_model_on_another_host(netns_pair, tiny_checkpoint, tmp_path):
    pair = netns_pair
    robot_env = _env(pair.host_ip, pair.discovery)
    host_env = _env(pair.robot_ip, pair.discovery)
    logs = {name: tmp_path / f"{name}.log" for name in ("graph", "player", "recorder")}
    processes = []
    try:
        processes.append(_in_netns(pair.host, "omni_ros.tools.bringup", [
            "--model-path", str(tiny_checkpoint), "--window-sec", str(WINDOW_SEC),
            "--param", "force_listen_count:=0", "--param", "listen_prob_scale:=0.02",
            "--param", "seed:=1", "--log-level", "warn"], host_env, logs["graph"]))
        recorder = _in_netns(pair.robot, "omni_ros.tools.recorder", [
            "--duration-sec", str(PLAY_SEC), "--wait-sec", "60", "--window-sec", str(WINDOW_SEC),
            "--output", str(tmp_path / "out")], robot_env, logs["recorder"])
        processes.append(recorder)
        processes.append(_in_netns(pair.robot, "omni_ros.tools.scene_player", [
            "--duration-sec", str(PLAY_SEC), "--request-at-sec", "1.0", "--fps", "5",
            "--width", "160", "--height", "120", "--wait-sec", "60"], robot_env, logs["player"]))
        deadline = time.monotonic() + 120
        while recorder.poll() is None and processes[0].poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        status = recorder.poll()
        tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in logs.values())
        assert status == 0, f"the recorder on the robot side did not finish\n{tails}"
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["windows_processed"] >= 6, f"omni/state did not cross the link\n{tails}"
        assert summary["speech_seconds"] > 0, f"no speech came back to the robot\n{tails}"
        assert summary["speech_format"] == "S16LE 1 ch 24000 Hz wave"
        # The camera and microphone went over the veth, not through shared memory.
        assert pair.bytes_sent(pair.robot, pair.robot_if) > 1_000_000
        assert pair.bytes_sent(pair.host, pair.host_if) > 100_000
    finally:
        stop(list(reversed(processes)), timeout=15)
        for process in processes:   # the bring-up's nodes, should it have been killed
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
