"""The timeline PNG of a recorded run (omni_ros_recorder --timeline FILE, omni_ros_bag_report).

Seconds from the start of the first window shown on the x axis, a row per signal: mic speech
activity, camera frames, listen/speak/interrupted, speech out, alerts, each named in the legend;
above them the words the robot said (omni/text) and the alerts' texts at the time they came;
below, compute time per window against the window length. matplotlib is imported only when a
timeline is drawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omni_ros.msg import DuplexState

COLORS = {"mic": "#756bb1", "camera": "#636363", "speech": "#fd8d3c", "alert": "#de2d26",
          DuplexState.LISTENING: "#9ecae1", DuplexState.SPEAKING: "#31a354",
          DuplexState.INTERRUPTED: "#de2d26"}
ROWS = ["alerts", "speech out", "model state", "camera frames", "mic speech"]
MAX_LABEL_CHARS = 34


def _short(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def build_timeline_figure(recorder):
    """The matplotlib figure of the timeline. `recorder` is a RunLog after its run (or anything
    with the same attributes: window_ns, states, frame_windows, mic_energy, speech_windows,
    speech_info, alerts, and optionally texts)."""
    import matplotlib  # noqa: PLC0415 - only for a timeline
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    window_ms = recorder.window_ns / 1e6
    w = window_ms / 1000.0                      # seconds per window
    states = {int(s.window_index): s for s in recorder.states}
    texts = list(getattr(recorder, "texts", []) or [])
    keys = set(states) | set(recorder.frame_windows) | set(recorder.mic_energy) | \
        set(recorder.speech_windows)
    if states:   # inputs stamped long before or after the model ran are not the run
        keys = {k for k in keys if min(states) - 2 <= k <= max(states) + 2}
    first, last = (min(keys), max(keys)) if keys else (0, 1)
    windows = np.arange(first, last + 1)
    x = (windows - first + 0.5) * w             # window centres, seconds from the start

    def at(k) -> float:
        return (int(k) - first + 0.5) * w

    width = 0.9 * w
    fig, (ax_words, ax, ax_t) = plt.subplots(
        3, 1, figsize=(max(9.0, 0.3 * len(x) + 4), 8.0), sharex=True,
        gridspec_kw={"height_ratios": [2.2, 3, 1.8]})
    rows = list(ROWS)
    for row in range(len(rows)):
        ax.axhline(row, color="#eeeeee", lw=0.8, zorder=0)
    mic = np.array([recorder.mic_energy.get(k, [0.0, 0])[0] for k in windows])
    ax.bar(x, 0.8 * mic, bottom=4 - 0.4, width=width, color=COLORS["mic"])
    frames = np.array([recorder.frame_windows.get(k, 0) for k in windows], dtype=float)
    if frames.max(initial=0) > 0:
        ax.bar(x, 0.8 * frames / frames.max(), bottom=3 - 0.4, width=width, color=COLORS["camera"])
        rows[3] = f"camera frames\n(full = {int(frames.max())}/window)"
    for k, s in states.items():
        ax.bar(at(k), 0.8, bottom=2 - 0.4, width=width, color=COLORS.get(s.state, "#cccccc"))
        if s.proactive:
            ax.plot(at(k), 2, marker="*", color="black", ms=6)
    speech = np.array([recorder.speech_windows.get(k, 0) for k in windows], dtype=float)
    rate = recorder.speech_info.sample_rate if recorder.speech_info else 24000
    ax.bar(x, 0.8 * np.clip(speech / (rate * w), 0, 1), bottom=1 - 0.4, width=width,
           color=COLORS["speech"])
    for alert in recorder.alerts:
        ax.plot(at(alert.window_index), 0, marker="v", color=COLORS["alert"], ms=9)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.legend(handles=[Patch(color=COLORS["mic"], label="mic: speech activity"),
                       Patch(color=COLORS["camera"], label="camera: frames per window"),
                       Patch(color=COLORS[DuplexState.LISTENING], label="model: listen"),
                       Patch(color=COLORS[DuplexState.SPEAKING], label="model: speak"),
                       Patch(color=COLORS[DuplexState.INTERRUPTED], label="model: interrupted"),
                       Line2D([], [], marker="*", color="black", ls="", label="proactive turn"),
                       Patch(color=COLORS["speech"], label="speech out: share of window"),
                       Line2D([], [], marker="v", color=COLORS["alert"], ls="", label="alert")],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

    # the words said (omni/text, black) and the alerts' texts (red), at the window they came in
    ax_words.set_ylim(0, 1)
    ax_words.set_yticks([])
    for spine in ("left", "right", "top"):
        ax_words.spines[spine].set_visible(False)
    for message in texts:
        if message.text.strip():
            ax_words.text(at(message.window_index), 0.02, _short(message.text), rotation=90,
                          va="bottom", ha="center", fontsize=7, color="black")
    for alert in recorder.alerts:
        ax_words.text(at(alert.window_index) + 0.3 * w, 0.02, "ALERT " + _short(alert.text, MAX_LABEL_CHARS - 6),
                      rotation=90, va="bottom", ha="center", fontsize=7, color=COLORS["alert"])
    ax_words.legend(handles=[Line2D([], [], color="black", ls="", marker="$a$",
                                    label="words said (omni/text)"),
                             Line2D([], [], color=COLORS["alert"], ls="", marker="$a$",
                                    label="alert text")],
                    loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax_words.set_title("omni_ros run timeline (one column per Omni-Flow window of "
                       f"{window_ms:.0f} ms)")

    compute = np.array([states[k].compute_ms if k in states else np.nan for k in windows])
    ax_t.bar(x, compute, width=width, color=np.where(compute > window_ms, "#de2d26", "#3182bd"),
             label="compute per window")
    ax_t.axhline(window_ms, color="black", ls="--", lw=1, label=f"window ({window_ms:.0f} ms)")
    ax_t.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax_t.set_ylabel("compute ms")
    ax_t.set_xlabel(f"seconds from the start (window {first} starts at 0 s)")
    ax_t.set_xlim(0, len(windows) * w)
    ax_t.set_ylim(0, max(window_ms * 1.15, np.nanmax(compute, initial=0) * 1.1))
    fig.tight_layout()
    return fig


def draw_timeline(recorder, path: str) -> Path:
    """One PNG at `path` (see build_timeline_figure); returns its resolved path."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig = build_timeline_figure(recorder)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.resolve()
