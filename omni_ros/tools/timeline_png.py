"""The timeline PNG of a recorded run (omni_ros_recorder --timeline FILE).

Windows on the x axis, a row per signal: mic speech activity, camera frames, listen/speak/
interrupted, speech out, alerts; below, compute time per window against the window length.
matplotlib is imported only when a timeline is drawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omni_ros.msg import DuplexState


def draw_timeline(recorder, path: str) -> Path:
    """One PNG at `path`: windows on the x axis; a row per signal; compute time against the window
    below. `recorder` is a Recorder after its run (or anything with the same attributes:
    window_ns, states, frame_windows, mic_energy, speech_windows, speech_info, alerts)."""
    import matplotlib  # noqa: PLC0415 - only for --timeline
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    window_ms = recorder.window_ns / 1e6
    states = {int(s.window_index): s for s in recorder.states}
    keys = set(states) | set(recorder.frame_windows) | set(recorder.mic_energy) | \
        set(recorder.speech_windows)
    if states:   # inputs stamped long before or after the model ran are not the run
        keys = {k for k in keys if min(states) - 2 <= k <= max(states) + 2}
    first, last = (min(keys), max(keys)) if keys else (0, 1)
    windows = np.arange(first, last + 1)
    x = windows - first
    colors = {DuplexState.LISTENING: "#9ecae1", DuplexState.SPEAKING: "#31a354",
              DuplexState.INTERRUPTED: "#de2d26"}
    fig, (ax, ax_t) = plt.subplots(2, 1, figsize=(max(8.0, 0.22 * len(x) + 3), 5.6),
                                   sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    rows = ["alerts", "speech out", "model state", "camera frames", "mic speech"]
    for row, name in enumerate(rows):
        ax.axhline(row, color="#eeeeee", lw=0.8, zorder=0)
    mic = np.array([recorder.mic_energy.get(k, [0.0, 0])[0] for k in windows])
    ax.bar(x, 0.8 * mic, bottom=4 - 0.4, width=0.9, color="#756bb1", label="mic speech activity")
    frames = np.array([recorder.frame_windows.get(k, 0) for k in windows], dtype=float)
    if frames.max(initial=0) > 0:
        ax.bar(x, 0.8 * frames / frames.max(), bottom=3 - 0.4, width=0.9, color="#636363")
        rows[3] = f"camera frames\n(full = {int(frames.max())}/window)"
    for k, s in states.items():
        ax.bar(k - first, 0.8, bottom=2 - 0.4, width=0.9, color=colors.get(s.state, "#cccccc"))
        if s.proactive:
            ax.plot(k - first, 2, marker="*", color="black", ms=6)
    speech = np.array([recorder.speech_windows.get(k, 0) for k in windows], dtype=float)
    rate = recorder.speech_info.sample_rate if recorder.speech_info else 24000
    ax.bar(x, 0.8 * np.clip(speech / (rate * window_ms / 1000.0), 0, 1), bottom=1 - 0.4,
           width=0.9, color="#fd8d3c")
    for alert in recorder.alerts:
        ax.plot(int(alert.window_index) - first, 0, marker="v", color="#de2d26", ms=9)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.legend(handles=[Patch(color=colors[DuplexState.LISTENING], label="listen"),
                       Patch(color=colors[DuplexState.SPEAKING], label="speak"),
                       Patch(color=colors[DuplexState.INTERRUPTED], label="interrupted"),
                       plt.Line2D([], [], marker="*", color="black", ls="", label="proactive"),
                       plt.Line2D([], [], marker="v", color="#de2d26", ls="", label="alert")],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_title("omni_ros run timeline (one column per Omni-Flow window)")
    compute = np.array([states[k].compute_ms if k in states else np.nan for k in windows])
    ax_t.bar(x, compute, width=0.9, color=np.where(compute > window_ms, "#de2d26", "#3182bd"))
    ax_t.axhline(window_ms, color="black", ls="--", lw=1, label=f"window ({window_ms:.0f} ms)")
    ax_t.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax_t.set_ylabel("compute ms")
    ax_t.set_xlabel(f"window (first = {first})")
    ax_t.set_ylim(0, max(window_ms * 1.15, np.nanmax(compute, initial=0) * 1.1))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.resolve()
