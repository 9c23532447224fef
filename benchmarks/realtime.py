"""Real-time benchmarks of omni_node on the tiny model, each in one run over real DDS (or, for
`soak`, in process): prints a table and appends it, with date and machine, to
benchmarks/results/<name>.md.

    .venv/bin/python benchmarks/realtime.py overhead   [--seconds 30]
    .venv/bin/python benchmarks/realtime.py latency    [--requests 6]
    .venv/bin/python benchmarks/realtime.py barge_in   [--trials 6]
    .venv/bin/python benchmarks/realtime.py camera     [--seconds 10]
    .venv/bin/python benchmarks/realtime.py soak       [--windows 1800]
    .venv/bin/python benchmarks/realtime.py gc
    (overhead and barge_in take --trees NAME=PATH: the same measures of omni_node run from
    another checkout, e.g. `git worktree add /tmp/before HEAD~1`, in the same run)

overhead: node CPU outside the model per window (the executor thread: conversions, buffering,
  barge-in echo cancelling and VAD, publishing; plus the unit's own time outside
  session.run_unit: frame decode, window VAD) as a fraction of the window.
latency:  from the last sample of a spoken request on the mic topic to the first speech sample
  published by a unit that heard it.
barge_in: from the voiced onset of a person talking over the robot to the last speech chunk
  published.
camera:   CPU per received 1920x1080 rgb8 frame at 30 fps in omni_node's executor thread
  against two bare rclpy subscribers' (same topic, same run): one with glibc's defaults, one
  keeping frame buffers on the heap as omni_node does.
Every process of a run uses config/fastdds_large_frames.xml; thread CPU is read from
/proc/<pid>/task/<tid>/schedstat (nanoseconds).
soak:     1,800 windows through the flow (buffers, conversions, loop, pacer) and the tiny model
  session in process: resident memory and per-window time, first 100 against last 100.
gc:       the pause of a full garbage collection with the tiny model loaded, startup objects
  tracked against frozen (run_node freezes them).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import append_result  # noqa: E402 - benchmarks/ is the script's folder
from omni_ros.flow.audio import float_to_s16le, s16le_to_float  # noqa: E402
from omni_ros.flow.types import INPUT_SAMPLE_RATE as RATE, OUTPUT_SAMPLE_RATE  # noqa: E402
from omni_ros.flow.units import NS_PER_S as NS  # noqa: E402
CLK_TCK = os.sysconf("SC_CLK_TCK")
NODE_PARAMS: list = []          # --param NAME:=VALUE, given to every omni_node of the run


# -- helpers ---------------------------------------------------------------------------------
def thread_cpu(pid: int, tid: int = None) -> float:
    """CPU seconds of one thread (default: the main thread), to the nanosecond: the scheduler's
    run time from /proc/.../schedstat (the tick counts of /proc/.../stat are 10 ms coarse)."""
    tid = pid if tid is None else tid
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / NS
    except (OSError, ValueError, IndexError):   # a kernel without schedstat
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def record(name: str, title: str, rows, notes: str = "") -> None:
    if NODE_PARAMS:
        rows = [*rows, ("omni_node parameters given (--param)", " ".join(NODE_PARAMS[1::2]))]
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)
    header = f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|"
    append_result(name, title, f"{header}\n{table}\n" + (f"\n{notes}\n" if notes else ""))


def tiny_checkpoint(folder: Path) -> Path:
    from omni_ros.model.checkpoint import write_checkpoint
    if not (folder / "config.json").exists():
        write_checkpoint(folder, seed=0)
    return folder


# omni_node runs from the source tree it is given (this script's own by default, others with
# `--trees`): this venv's installed interfaces are linked into that tree, and its package is
# imported instead of the editable install's, so edits elsewhere cannot change a run.
TREE_LAUNCHER = ("import runpy, sys\n"
                 "sys.meta_path[:] = [f for f in sys.meta_path\n"
                 "                    if not type(f).__name__.startswith('ScikitBuild')]\n"
                 "sys.path.insert(0, sys.argv.pop(1))\n"
                 "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n")


def prepare_tree(tree: Path) -> Path:
    """Link the generated interfaces (omni_ros.msg and its type-support libraries) of this venv
    into another checkout's package folder, so its nodes run against the same messages."""
    import omni_ros.msg
    installed = Path(omni_ros.msg.__file__).resolve().parents[1]
    for item in installed.iterdir():
        target = tree / "omni_ros" / item.name
        if (item.name == "msg" or item.suffix == ".so") and not target.exists():
            target.symlink_to(item)
    return tree


class Graph:
    """omni_flow_clock + omni_node as processes in a private DDS domain, and a driver node.
    `tree`: the source tree omni_node runs from (see prepare_tree); None: this script's."""

    def __init__(self, checkpoint: Path, window_sec: float, *extra: str, tree: Path = None) -> None:
        import rclpy
        env = os.environ.copy()
        env["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        # Frames larger than Fast DDS's default 512 KB shared-memory segment are mostly lost
        # without it (see the profile); every process of the run, the driver's too, uses it.
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / "fastdds_large_frames.xml")
        os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                               "FASTDDS_DEFAULT_PROFILES_FILE")})
        self.env = env
        self.logs = Path(tempfile.mkdtemp(prefix="omni_bench_"))
        window = ["-p", f"window_sec:={window_sec}"]
        self.processes = [
            self.start("omni_ros.ros.clock_node", window, "clock"),
            self.start("omni_ros.ros.omni_node", [*window, "-p", f"model_path:={checkpoint}",
                                                  *extra, *NODE_PARAMS], "omni_node", tree)]
        self.node_pid = self.processes[1].pid
        rclpy.init()

    def start(self, module, args, name, tree: Path = None):
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115
        tree = prepare_tree(ROOT) if tree is None else tree
        command = [sys.executable, "-c", TREE_LAUNCHER, str(tree), module]
        return subprocess.Popen([*command, "--ros-args", *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tree)

    def stop(self) -> None:
        import rclpy
        from common import stop_processes
        stop_processes(self.processes)
        rclpy.try_shutdown()


def make_driver(echo_gain: float = 0.0):
    """A node with a mic (16 kHz mono, hearing the robot's speech at echo_gain and a scripted
    person), a camera publisher and recorders of omni_node's outputs."""
    import soxr
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from omni_ros.flow.echo import ReferenceBuffer
    from omni_ros.msg import DuplexState
    from omni_ros.ros import qos
    from omni_ros.ros.conversions import ns_to_stamp, stamp_to_ns

    class Driver(Node):
        def __init__(self):
            super().__init__("bench_driver")
            self.lock = threading.Lock()
            self.states, self.speech, self.diagnostics = [], [], []
            self.heard = ReferenceBuffer(seconds=30.0)
            self.person = None
            self.mic = self.create_publisher(AudioDataStamped, "mic/audio_stamped", qos.MIC_AUDIO)
            self.camera = self.create_publisher(Image, "camera/image_raw", qos.CAMERA)
            self.info = self.create_publisher(AudioInfo, "mic/audio_info", qos.AUDIO_INFO)
            self.info.publish(AudioInfo(channels=1, sample_rate=RATE, sample_format="S16LE",
                                        bitrate=RATE * 16, coding_format="wave"))
            self.create_subscription(DuplexState, "omni/state", self._keep(self.states), qos.OUTPUT)
            self.create_subscription(DiagnosticArray, "/diagnostics", self._keep(self.diagnostics),
                                     qos.OUTPUT)
            self.create_subscription(AudioDataStamped, "speech/audio_stamped", self._speech,
                                     qos.SPEECH)

        def _keep(self, into):
            def cb(m):
                with self.lock:
                    into.append(m)
            return cb

        def _speech(self, m):
            pcm = s16le_to_float(bytes(m.audio.data))
            stamp = stamp_to_ns(m.header.stamp)
            with self.lock:
                self.speech.append((stamp, pcm.shape[0], m.header.frame_id, time.monotonic()))
                if echo_gain:
                    self.heard.add(stamp, soxr.resample(pcm, OUTPUT_SAMPLE_RATE, RATE))

        def values(self):
            from omni_ros.ros.diagnostics import values_of
            with self.lock:
                return values_of(self.diagnostics[-20:], "omni_node")

        def mic_chunk(self, start_ns, n):
            with self.lock:
                audio = echo_gain * self.heard.get(self.heard.index(start_ns), n)
            if self.person is not None:
                p_start, p = self.person
                off = (start_ns - p_start) * RATE // NS
                lo, hi = max(0, off), min(p.shape[0], off + n)
                if hi > lo:
                    audio[lo - off:hi - off] += 0.7 * p[lo:hi]
            return audio

        def feed(self, seconds, chunk_ms=20, frame=None, fps=10.0, mic=True):
            n = RATE * chunk_ms // 1000
            next_ns = self.get_clock().now().nanoseconds
            start = time.monotonic()
            frames = 0
            while time.monotonic() - start < seconds:
                now = self.get_clock().now().nanoseconds
                while mic and next_ns + chunk_ms * 1_000_000 <= now:
                    m = AudioDataStamped()
                    m.header.stamp = ns_to_stamp(next_ns)
                    m.audio.data = float_to_s16le(self.mic_chunk(next_ns, n))
                    self.mic.publish(m)
                    next_ns += chunk_ms * 1_000_000
                if frame is not None and frames / fps <= time.monotonic() - start:
                    frame.header.stamp = ns_to_stamp(now)
                    self.camera.publish(frame)
                    frames += 1
                time.sleep(0.003)
            return frames

    return Driver()


def spin_in_background(node):
    from rclpy.executors import SingleThreadedExecutor
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return executor


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def speech_16k(text, voice="en-us"):
    from omni_ros.tools.scene_player import synthesize_float
    return synthesize_float(text, voice=voice, sample_rate=RATE)


# -- benchmarks ------------------------------------------------------------------------------
BARE_CODE = """import rclpy
import rclpy.executors
from sensor_msgs.msg import Image
from audio_common_msgs.msg import AudioDataStamped
from omni_ros.ros import qos
rclpy.init()
node = rclpy.create_node('bare_subscriber')
count = {'camera': 0, 'mic': 0}
def camera(m):
    count['camera'] += 1
def mic(m):
    count['mic'] += 1
node.create_subscription(Image, 'camera/image_raw', camera, qos.CAMERA)
if WITH_MIC:
    node.create_subscription(AudioDataStamped, 'mic/audio_stamped', mic, qos.MIC_AUDIO)
if 'EXECUTOR_KIND' == 'events':
    from rclpy.experimental import EventsExecutor
    executor = EventsExecutor()
else:
    executor = rclpy.executors.SingleThreadedExecutor()
executor.add_node(node)
try:
    while rclpy.ok():           # spin_once with a timeout: SIGINT ends either executor
        executor.spin_once(timeout_sec=0.5)
except BaseException:
    pass
print('received', count['camera'], count['mic'], flush=True)
"""


def heap_env() -> dict:
    """glibc keeping frame buffers on its heap, as omni_node has it (keep_frame_buffers_on_heap)."""
    from omni_ros.ros.runner import FRAME_MMAP_THRESHOLD, FRAME_TRIM_THRESHOLD
    return {"MALLOC_MMAP_THRESHOLD_": str(FRAME_MMAP_THRESHOLD),
            "MALLOC_TRIM_THRESHOLD_": str(FRAME_TRIM_THRESHOLD)}


def start_bare(graph, mic: bool, executor: str = "single", name: str = "bare", env=None):
    log = open(graph.logs / f"{name}.log", "w")  # noqa: SIM115
    code = BARE_CODE.replace("WITH_MIC", str(mic)).replace("EXECUTOR_KIND", executor)
    return subprocess.Popen([sys.executable, "-c", code], env={**graph.env, **(env or {})},
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def measure_overhead(args, checkpoint, executor_kind: str, tree: Path = None) -> dict:
    from omni_ros.ros.conversions import rgb_to_image
    graph = Graph(checkpoint, args.window_sec, "-p", "diagnostics_period_sec:=1.0",
                  "-p", "listen_prob_scale:=0.3", "-p", "force_listen_count:=0",
                  "-p", f"executor:={executor_kind}", tree=tree)
    bare = start_bare(graph, mic=True, executor=executor_kind, env=heap_env())
    driver = make_driver(echo_gain=0.3)
    executor = spin_in_background(driver)
    try:
        wait_for(lambda: driver.mic.get_subscription_count() > 1, 120, "omni_node")
        frame = rgb_to_image(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8),
                             "rgb8", 0, "camera")
        driver.feed(3.0, frame=frame)           # warm up
        cpu0, states0 = thread_cpu(graph.node_pid), len(driver.states)
        values0 = driver.values()
        bare0 = thread_cpu(bare.pid)
        t0 = time.monotonic()
        driver.feed(args.seconds, frame=frame)
        cpu1, elapsed = thread_cpu(graph.node_pid), time.monotonic() - t0
        bare_ms = (thread_cpu(bare.pid) - bare0) / (elapsed / args.window_sec) * 1000
        values = driver.values()
    finally:
        executor.shutdown()
        bare.send_signal(2)
        bare.wait(10)
        graph.stop()
    windows = elapsed / args.window_sec
    # The node's own account of its barge-in detector's CPU (cumulative, in its diagnostics),
    # per window between the two diagnostics messages read.
    ticks = int(values.get("ticks_received", 0)) - int(values0.get("ticks_received", 0))
    barge_us = int(values.get("barge_in_cpu_us", 0)) - int(values0.get("barge_in_cpu_us", 0))
    return {"executor_ms": (cpu1 - cpu0) / windows * 1000, "bare_ms": bare_ms,
            "unit_ms": float(values.get("unit_overhead_ms_mean", "nan")),
            "unit_vad_ms": float(values.get("unit_vad_ms_mean", "nan")),
            "barge_in_ms": barge_us / 1000 / max(1, ticks), "values": values,
            "elapsed": elapsed, "states": len(driver.states) - states0}


def overhead_figures(r: dict) -> dict:
    """One node's run -> its figures in ms per window."""
    total = r["executor_ms"] + r["unit_ms"]
    detectors = r["barge_in_ms"] + r["unit_vad_ms"]
    return {"executor": r["executor_ms"], "barge_in": r["barge_in_ms"], "unit": r["unit_ms"],
            "unit_vad": r["unit_vad_ms"], "bare": r["bare_ms"], "plumbing": total - detectors,
            "detectors": detectors, "total": total, "beyond": total - detectors - r["bare_ms"]}


def variants(args, kinds):
    """(label, executor kind, tree) of every node configuration of the run: each executor kind
    on this tree, then on each `--trees` tree."""
    found = [(kind, kind, None) for kind in kinds]
    for name, tree in args.trees:
        found += [(f"{name} {kind}", kind, tree) for kind in kinds]
    return found


def bench_overhead(args, checkpoint):
    kinds = [k.strip() for k in args.executors.split(",") if k.strip()]
    configs = variants(args, kinds)
    runs = {label: [] for label, _, _ in configs}
    for _ in range(args.repeats):          # interleaved: drift on the machine hits every variant
        for label, kind, tree in configs:
            runs[label].append(measure_overhead(args, checkpoint, kind, tree))
    window_ms = args.window_sec * 1000
    rows = [("window", f"{window_ms:.0f} ms"),
            ("inputs", "640x480 rgb8 at 10 fps, 16 kHz mono mic in 20 ms chunks, robot echo 0.3"),
            ("nodes per executor kind", f"{args.repeats}, one after the other; each figure is "
                                        f"the median (min-max) over them")]
    for kind, trials in runs.items():
        figures = [overhead_figures(r) for r in trials]

        def med(key, scale=1.0, unit=" ms"):
            values = [f[key] * scale for f in figures]
            if len(values) == 1:
                return f"{values[0]:.2f}{unit}"
            return f"{np.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"

        pct = 100.0 / window_ms
        v = trials[-1]["values"]
        rows += [
            (f"[{kind}] run (last node)", f"{trials[-1]['elapsed']:.1f} s, "
                                          f"{trials[-1]['states']} states, "
                                          f"{v.get('speech_chunks_published', '?')} speech chunks, "
                                          f"{v.get('barge_in_frames_scored', '?')} barge-in "
                                          f"frames scored, {v.get('barge_ins', '?')} barge-ins"),
            (f"[{kind}] executor thread CPU per window", med("executor")),
            (f"[{kind}] ...of which the barge-in detector (echo canceller + VAD)",
             med("barge_in")),
            (f"[{kind}] unit time outside session.run_unit", med("unit")),
            (f"[{kind}] ...of which the window's VAD", med("unit_vad")),
            (f"[{kind}] bare rclpy subscriber of mic + camera ({kind} executor), CPU per window",
             med("bare")),
            (f"[{kind}] node overhead / window (conversions, buffering, publishing)",
             med("plumbing", pct, " %") + " (target < 2 %)"),
            (f"[{kind}] speech detectors / window (barge-in, window VAD)",
             med("detectors", pct, " %")),
            (f"[{kind}] all node CPU outside the model / window", med("total", pct, " %")),
            (f"[{kind}] node overhead beyond the bare subscriber", med("beyond", pct, " %"))]
    executor_median = {label: float(np.median([r["executor_ms"] for r in trials]))
                       for label, trials in runs.items()}
    unit_median = {label: float(np.median([r["unit_ms"] for r in trials]))
                   for label, trials in runs.items()}
    first, *others = kinds
    for kind in others:
        rows.append((f"executor CPU {first} / {kind} (medians)",
                     f"{executor_median[first] / executor_median[kind]:.2f}x"))
    for name, _ in args.trees:
        for kind in kinds:
            other = f"{name} {kind}"
            rows.append((f"[{kind}] this tree / {name}: executor CPU, unit time outside the model "
                         f"(medians)", f"{executor_median[kind] / executor_median[other]:.2f}x, "
                                       f"{unit_median[kind] / unit_median[other]:.2f}x"))
    record("node_overhead", "Node overhead per window (everything except model compute)", rows,
           "Executor thread = all callbacks (mic decode/resample/buffer, barge-in echo cancelling "
           "and VAD while the robot speaks, camera header checks, tick hand-over, speech publishing, "
           "diagnostics); measured from /proc per-thread CPU. The speech detectors (the barge-in "
           "detector's echo canceller and VAD, the VAD over each window's audio) are signal models "
           "and are counted apart from the overhead, from the node's own diagnostics "
           "(`barge_in_cpu_us`, `unit_vad_ms_mean`). The tiny model's speech is noise-like, which "
           "WebRTC AEC3 cancels by only ~10 dB (speech by 25-50 dB), so the VAD scores most frames "
           "while the robot speaks: a heavy case for barge-in. One omni_node per executor kind "
           "(`executor` parameter) and repeat, one after the other in this run"
           + ("; the trees compared (--trees) interleaved with this one: "
              + ", ".join(f"{n} = {t}" for n, t in args.trees) if args.trees else "") + ".")


def bench_latency(args, checkpoint):
    graph = Graph(checkpoint, args.window_sec, "-p", "listen_prob_scale:=0.02",
                  "-p", "force_listen_count:=0", "-p", "barge_in:=false",
                  "-p", "speech_chunk_ms:=100", "-p", f"token2wav_steps:={args.token2wav_steps}")
    driver = make_driver()
    executor = spin_in_background(driver)
    request = speech_16k("Robot, what do you see on the table?")
    voiced = np.nonzero(np.abs(request) > 0.02)[0]
    latencies = []
    try:
        wait_for(lambda: driver.mic.get_subscription_count() > 0, 120, "omni_node")
        driver.feed(2.0)
        for _ in range(args.requests):
            start_ns = driver.get_clock().now().nanoseconds + 100_000_000
            driver.person = (start_ns, request)
            last_ns = start_ns + int(voiced[-1]) * NS // RATE
            driver.feed(request.shape[0] / RATE + 2.5)
            last_window = last_ns // int(args.window_sec * NS)
            with driver.lock:
                firsts = [stamp for stamp, _, frame_id, _ in driver.speech
                          if int(frame_id.split("_")[1]) >= last_window and stamp >= last_ns]
            if firsts:
                latencies.append((min(firsts) - last_ns) / NS)
            driver.person = None
            driver.feed(0.7)
        values = driver.values()
    finally:
        executor.shutdown()
        graph.stop()
    lat = np.array(latencies)
    record("end_to_end_latency", "End-to-end latency: last request sample on the mic -> first "
           "speech sample published", [
               ("window", f"{args.window_sec * 1000:.0f} ms (input_grace_ms 100)"),
               ("requests answered", f"{lat.size} of {args.requests}"),
               ("latency min / median / max", f"{lat.min():.3f} / {np.median(lat):.3f} / "
                                              f"{lat.max():.3f} s" if lat.size else "n/a"),
               ("compute_ms mean", values.get("compute_ms_mean", "?") + " ms"),
           ], "Expected: the wait until the window holding the last sample closes (uniform 0 .. "
              "one window) + input_grace_ms + the unit's compute, then its speech starts as soon "
              "as the speech already queued ends. The random-weight model is forced to speak "
              "(listen_prob_scale 0.02) so it talks all the time: the answering unit's speech "
              "queues behind up to one window of the previous unit's speech, which this figure "
              "includes (barge-in is off here, so the request does not silence the robot). The "
              "speech comes from the released waveform stage (token2wav_steps "
              f"{args.token2wav_steps}): its lookahead adds no window of delay (a unit's speech is "
              "decoded in the unit), but a turn's first window starts with 0.28 s of silence (160 ms "
              "of zeros and three silence codes), so a new turn is audible 0.28 s after its first "
              "published sample; the turn's last 0.28 s come with its end.")


def vad_floor_ms(person: np.ndarray, voiced: int, alignments: int = 16) -> np.ndarray:
    """silero-vad alone on the person's voice (no echo, no robot, in process): from the voiced
    onset to the end of the first 32 ms frame scored as speech, over frame alignments spread
    across one frame. No frame-based detector using it can stop speech sooner."""
    from omni_ros.flow.bargein import FRAME
    from omni_ros.flow.vad import VoiceActivity
    vad, found = VoiceActivity(), []
    for k in range(alignments):
        vad.reset()
        pad = RATE // 2 + k * FRAME // alignments
        x = np.concatenate([np.zeros(pad, np.float32), 0.7 * person])
        for start in range(0, x.shape[0] - FRAME + 1, FRAME):
            if vad(x[start:start + FRAME]) >= 0.5:
                found.append((start + FRAME - pad - voiced) * 1000 / RATE)
                break
    return np.array(found)


def measure_barge_in(args, checkpoint, tree: Path = None):
    """(stop latencies s, barge-ins detected per trial, the node's last diagnostics)."""
    graph = Graph(checkpoint, args.window_sec, "-p", "listen_prob_scale:=0.02",
                  "-p", "force_listen_count:=0", "-p", f"speech_chunk_ms:={args.chunk_ms}",
                  "-p", "diagnostics_period_sec:=0.5", tree=tree)
    driver = make_driver(echo_gain=0.5)
    executor = spin_in_background(driver)
    person = speech_16k("Stop, stop! Wait a moment please.", voice="en-us+f3")
    voiced = int(np.argmax(np.abs(person) > 0.02))
    stops, detect = [], []
    try:
        wait_for(lambda: driver.mic.get_subscription_count() > 0, 120, "omni_node")
        driver.feed(4.0)
        for _ in range(args.trials):
            wait_for(lambda: driver.speech and time.monotonic() - driver.speech[-1][3] < 0.2,
                     20, "the robot to speak")
            start_ns = driver.get_clock().now().nanoseconds + 50_000_000
            onset = start_ns + voiced * NS // RATE
            driver.person = (start_ns, person)
            barge0 = int(driver.values().get("barge_ins", 0))
            driver.feed(person.shape[0] / RATE + 0.3)
            end = start_ns + person.shape[0] * NS // RATE
            with driver.lock:
                during = [s for s, *_ in driver.speech if onset - 2 * NS < s <= end]
            last = max([s for s in during], default=None)
            if last is not None:
                stops.append(max(0.0, (last - onset) / NS))
            driver.person = None
            driver.feed(3.0)
            detect.append(int(driver.values().get("barge_ins", 0)) - barge0)
        values = driver.values()
    finally:
        executor.shutdown()
        graph.stop()
    return np.array(stops), detect, values


def bench_barge_in(args, checkpoint):
    trees = [("", None)] + [(f"{name}: ", tree) for name, tree in args.trees]
    rows = [("speech chunk", f"{args.chunk_ms} ms; target <= one chunk + 50 ms = "
                             f"{args.chunk_ms + 50} ms"),
            ("echo canceller", "auto (webrtc if installed, else fdaf); robot echo 0.5 in mic")]
    medians = {}
    for prefix, tree in trees:
        s, detect, values = measure_barge_in(args, checkpoint, tree)
        medians[prefix] = float(np.median(s)) if s.size else float("nan")
        rows += [
            (f"{prefix}trials / barge-ins detected", f"{len(s)} / {sum(1 for d in detect if d)}"),
            (f"{prefix}stop latency min / median / max", f"{s.min():.3f} / {np.median(s):.3f} / "
                                                         f"{s.max():.3f} s" if s.size else "n/a"),
            (f"{prefix}barge_ins counted by the node (whole run)", values.get("barge_ins", "?")),
            (f"{prefix}false barge-ins (outside the trials)",
             str(int(values.get("barge_ins", 0)) - sum(detect)))]
    for prefix, _ in trees[1:]:
        rows.append((f"median stop latency, this tree - {prefix.rstrip(': ')}",
                     f"{medians[''] - medians[prefix]:+.3f} s"))
    person = speech_16k("Stop, stop! Wait a moment please.", voice="en-us+f3")
    voiced = int(np.argmax(np.abs(person) > 0.02))
    floor = vad_floor_ms(person, voiced)
    record("barge_in_latency", "Barge-in stop latency: voiced onset on the mic -> last speech "
           "chunk published", rows + [
               ("silero-vad alone on the voice (no echo, in process): onset -> end of its first "
                "speech frame, min / median / max over 16 frame alignments",
                f"{floor.min() / 1000:.3f} / {np.median(floor) / 1000:.3f} / "
                f"{floor.max() / 1000:.3f} s"),
               ("...plus one 20 ms mic chunk: the soonest any stop can come from this VAD",
                f"max {(floor.max() + 20) / 1000:.3f} s"),
           ], "Speech is held from the detector's first speech frame until the run is decided; "
              "a barge-in needs barge_in_min_speech_ms (64 by default) of speech scored in 32 ms "
              "frames after each 20 ms mic chunk arrives; the chunk already published when "
              "speech is first held plays out (the stop latency counts its publish time). The "
              "phrase starts with a fricative ('St-') that silero-vad scores as speech only once "
              "the vowel comes, which sets the floor above.")


def bench_camera(args, checkpoint):
    from omni_ros.ros.conversions import rgb_to_image
    graph = Graph(checkpoint, args.window_sec, "-p", "barge_in:=false")
    # Two bare subscribers of omni_node's default executor: one as any rclpy node starts, one
    # with glibc keeping frame buffers on its heap as omni_node has it (keep_frame_buffers_on_heap)
    bares = {"bare": start_bare(graph, mic=False, executor="events"),
             "bare_heap": start_bare(graph, mic=False, executor="events", name="bare_heap",
                                     env=heap_env())}
    driver = make_driver()
    executor = spin_in_background(driver)
    frame = rgb_to_image(np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), np.uint8),
                         "rgb8", 0, "camera")
    pids = {"node": graph.node_pid, **{k: p.pid for k, p in bares.items()}}
    try:
        wait_for(lambda: driver.camera.get_subscription_count() >= 3, 120, "subscribers")
        time.sleep(2.0)
        idle_t0 = time.monotonic()
        cpu0 = {k: thread_cpu(pid) for k, pid in pids.items()}
        time.sleep(3.0)
        idle = time.monotonic() - idle_t0
        idle_rate = {k: (thread_cpu(pid) - cpu0[k]) / idle for k, pid in pids.items()}
        values0 = driver.values()
        cpu0 = {k: thread_cpu(pid) for k, pid in pids.items()}
        t0 = time.monotonic()
        sent = driver.feed(args.seconds, frame=frame, fps=30.0, mic=False)   # frames only
        time.sleep(0.5)
        elapsed = time.monotonic() - t0
        cpu = {k: thread_cpu(pid) - cpu0[k] - idle_rate[k] * elapsed for k, pid in pids.items()}
        values = driver.values()
    finally:
        executor.shutdown()
        for bare in bares.values():
            bare.send_signal(2)
            bare.wait(10)
        graph.stop()
    received = {"node": int(values.get("frames_received", 0)) - int(values0.get("frames_received", 0))}
    for k in bares:
        received[k] = int((graph.logs / f"{k}.log").read_text().split("received")[-1].split()[0])
    per = {k: cpu[k] / max(received[k], 1) * 1000 for k in pids}
    record("camera_ingest", "Camera ingest: CPU per received 1920x1080 rgb8 frame at 30 fps", [
        ("frames sent", str(sent)),
        ("frames received: omni_node / bare / bare, heap buffers",
         f"{received['node']} / {received['bare']} / {received['bare_heap']}"),
        ("omni_node executor thread CPU per frame", f"{per['node']:.2f} ms"),
        ("bare rclpy subscriber, glibc defaults, CPU per frame", f"{per['bare']:.2f} ms"),
        ("bare rclpy subscriber, frame buffers on the heap, CPU per frame",
         f"{per['bare_heap']:.2f} ms"),
        ("ratio omni_node / bare (glibc defaults)",
         f"{per['node'] / per['bare']:.2f}x (target <= 1.2x)"),
        ("ratio omni_node / bare (heap buffers, like omni_node)",
         f"{per['node'] / per['bare_heap']:.2f}x (target <= 1.2x)"),
    ], "Main (executor) thread CPU from /proc/<pid>/task/<tid>/schedstat; idle CPU of each "
       "thread (3 s before the frames) subtracted. Fast DDS profile "
       "config/fastdds_large_frames.xml in every process. omni_node takes frames serialized, "
       "reads the header and data length of each, and deserializes and decodes only the newest "
       "frame of a window when its unit runs (on the unit worker, not counted here).")


def tiny_session(checkpoint: Path, **options):
    """The tiny checkpoint's torch session on the CPU, in this process."""
    from omni_ros.runtime.registry import BackendSettings, create_session
    return create_session("torch", BackendSettings(model_path=str(checkpoint), device="cpu",
                                                   dtype="float32", session_options=options))


def bench_soak(args, checkpoint):
    from omni_ros.flow.buffers import WindowBuffer
    from omni_ros.flow.unit_runner import RunnerParams, UnitRunner
    from omni_ros.flow.speech import SpeechPacer
    from omni_ros.flow.audio import AudioInputStream
    from omni_ros.ros.conversions import image_to_rgb, rgb_to_image

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    window_ns = NS
    session = tiny_session(checkpoint, listen_prob_scale=0.3, force_listen_count=0)
    buffer = WindowBuffer(window_ns)
    runner = UnitRunner(session, buffer, params=RunnerParams(window_ns=window_ns))
    pacer = SpeechPacer(24000, 200)
    mic = AudioInputStream(48000, 2, "S16LE")
    rng = np.random.default_rng(0)
    frame = rgb_to_image(rng.integers(0, 255, (480, 640, 3), np.uint8), "rgb8", 0, "camera")
    times, rss, speaking = [], [], 0
    for k in range(args.windows):
        started = time.perf_counter()
        for c in range(50):     # one window of 20 ms stereo 48 kHz mic chunks
            stamp = k * window_ns + c * 20_000_000
            pcm = float_to_s16le(rng.normal(0, 0.05, (960, 2)))
            out_stamp, samples = mic.push(stamp, pcm)
            buffer.add_audio(out_stamp, samples)
        for f in range(3):
            frame.header.stamp.sec, frame.header.stamp.nanosec = k, f * 300_000_000
            buffer.add_frame(k * window_ns + f * 300_000_000, image_to_rgb(frame))
        report = runner.run_window(k, 0)
        if report.speech.size:
            speaking += 1
            pacer.enqueue(k, report.speech, k * window_ns)
        pacer.due((k + 1) * window_ns)
        times.append(time.perf_counter() - started)
        rss.append(rss_mb())
        if (k + 1) % 100 == 0:
            print(f"window {k + 1}: last 100 mean {1000 * np.mean(times[-100:]):.1f} ms, "
                  f"RSS {rss[-1]:.1f} MB", flush=True)
    t = np.array(times) * 1000
    n = min(100, args.windows // 4)
    record("soak", f"Soak: {args.windows} simulated windows (flow + tiny model, in process)", [
        ("windows / speaking", f"{args.windows} / {speaking}"),
        (f"per-window time, first {n}", f"mean {t[:n].mean():.1f} ms, p95 {np.percentile(t[:n], 95):.1f} ms"),
        (f"per-window time, last {n}", f"mean {t[-n:].mean():.1f} ms, p95 {np.percentile(t[-n:], 95):.1f} ms"),
        (f"resident memory, after first {n}", f"{rss[n - 1]:.1f} MB"),
        ("resident memory, at the end", f"{rss[-1]:.1f} MB"),
        ("resident memory, max", f"{max(rss):.1f} MB"),
        ("units failed", str(runner.counters.units_failed)),
    ], "Each window: 50 stereo 48 kHz mic chunks decoded and resampled, 3 640x480 frames "
       "converted, one unit run, speech paced.")


def bench_gc(args, checkpoint):
    """The pause of a full garbage collection in a process holding the tiny model, with the
    startup objects tracked (Python's default) and frozen (what run_node does)."""
    import gc
    from omni_ros.ros.runner import freeze_startup_objects

    session = tiny_session(checkpoint)
    assert session is not None

    def full_collection_ms(repeats=5):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            gc.collect()
            times.append((time.perf_counter() - started) * 1000)
        return float(np.median(times))

    tracked = len(gc.get_objects())
    before = full_collection_ms()
    frozen = freeze_startup_objects()
    after = full_collection_ms()
    record("gc_pause", "Full garbage collection with the model loaded (in process)", [
        ("objects tracked after startup", str(tracked)),
        ("full collection, startup objects tracked (median of 5)", f"{before:.1f} ms"),
        ("objects frozen by freeze_startup_objects()", str(frozen)),
        ("full collection, startup objects frozen (median of 5)", f"{after * 1000:.0f} us"),
    ], "A full collection runs when enough objects have survived younger collections; it stalls "
       "whichever callback allocated last. run_node freezes the objects alive once the node is "
       "built (gc.freeze), so these pauses only walk what came after.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=["overhead", "latency", "barge_in", "camera", "soak",
                                         "gc"])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--window-sec", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--token2wav-steps", type=int, default=10, help="latency: the waveform stage's steps")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3,
                        help="overhead: nodes run one after the other per executor kind")
    parser.add_argument("--windows", type=int, default=1800)
    parser.add_argument("--chunk-ms", type=int, default=100, help="barge_in: speech_chunk_ms")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="an omni_node parameter for every node of the run (repeatable)")
    parser.add_argument("--executors", default="events,single",
                        help="overhead: executor kinds to compare, in one run")
    parser.add_argument("--trees", default="", metavar="NAME=PATH,...",
                        help="overhead, barge_in: also run omni_node from these source trees "
                             "(e.g. a git worktree of another commit), in the same run")
    args = parser.parse_args()
    args.trees = [(name, prepare_tree(Path(path).resolve())) for name, _, path in
                  (item.partition("=") for item in args.trees.split(",") if item)]
    for item in args.param:
        NODE_PARAMS.extend(["-p", item])
    if args.seconds is None:
        args.seconds = 10.0 if args.name == "camera" else 30.0
    checkpoint = Path(args.checkpoint) if args.checkpoint else \
        tiny_checkpoint(Path(tempfile.gettempdir()) / "omni_ros_bench_tiny")
    {"overhead": bench_overhead, "latency": bench_latency, "barge_in": bench_barge_in,
     "camera": bench_camera, "soak": bench_soak, "gc": bench_gc}[args.name](args, checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
