"""A simulated room for barge-in trials: what the robot's microphone hears when the robot's own
loudspeaker, a person and background noise share a reverberant room.

Pieces (no ROS here; benchmarks/barge_in_rooms.py and test/test_barge_in_rooms.py drive them over
DDS):

* `Condition`: one acoustic condition of the grid (room RT60, loudspeaker-to-mic and person
  distances, noise kind and SNR, speaker latency and the node's `echo_delay_ms`, the person's
  voice, language, speed and onset class, the robot's voice kind and level).
* `Room`: image-source room impulse responses (pyroomacoustics) for the robot's loudspeaker, the
  person and the babble talkers, all to one microphone, with the levels set physically: every
  talker (the loudspeaker too, unless `robot_level_db` says otherwise) speaks at the same level
  at 1 m, so a loudspeaker 5 cm from the mic is ~26 dB louder there than a person at 1 m.
* `EchoPath`: the robot's published speech as the mic hears it, built up chunk by chunk as it is
  published: convolved with the loudspeaker-to-mic RIR and delayed by the speaker latency
  (overlap-added on the 16 kHz grid of the ROS clock).
* `noise(kind, ...)`: babble (several espeak-ng talkers, each through its own RIR), fan (a motor
  hum and its harmonics over low-passed noise), street (brown noise with slow swells and passing
  vehicles); synthetic and seeded.
* `phrase(...)`: a person's phrase by espeak-ng, and `onset_index`: its first sample of speech
  (fricatives included: the first 10 ms frame within 30 dB of the loudest).
* `RobotSpeech`: real speech (espeak-ng) for a test double of the model's speech only: the node's
  model keeps deciding when to speak; only the samples it speaks are replaced.

Everything is seeded: the same Condition and seed give the same signals.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

RATE = 16000
SOUND_SPEED = 343.0
ROOM_DIMS = (6.0, 5.0, 2.8)           # a living room / lab; the mic is near the middle
MIC_POS = (2.6, 2.4, 1.2)             # the robot's head height
SPEECH_RMS = 10 ** (-26 / 20)         # the level of a dry phrase as the talker's 1 m level

# Person phrases by onset class: vowel, fricative, plosive (first sound), short and long.
PHRASES: Dict[str, Dict[str, List[str]]] = {
    "en": {"vowel": ["Excuse me, I have a question.", "Okay, hold on a moment please.",
                     "Actually, that is not what I asked."],
           "fricative": ["Stop, stop! Wait a moment please.", "Sorry, can you stop talking?",
                         "Hey, listen to me for a second."],
           "plosive": ["Pardon me, but please wait.", "Can you wait a second please?",
                       "Please be quiet for a moment."],
           "short": ["Stop.", "Wait.", "Okay."],
           "long": ["Excuse me, I think you misunderstood what I was asking, I wanted to know "
                    "about the weather tomorrow, not today."]},
    "de": {"vowel": ["Entschuldigung, ich habe eine Frage."], "fricative": ["Stopp, warte bitte kurz."],
           "plosive": ["Bitte warte einen Moment."], "short": ["Halt."],
           "long": ["Entschuldigung, das ist nicht was ich wissen wollte, ich wollte nach dem "
                    "Wetter fragen."]},
    "fr": {"vowel": ["Excusez-moi, j'ai une question."], "fricative": ["Stop, attends un peu."],
           "plosive": ["Pardon, attends un moment."], "short": ["Stop."],
           "long": ["Excusez-moi, ce n'est pas ce que je voulais savoir, je voulais la météo."]},
    "es": {"vowel": ["Oye, tengo una pregunta."], "fricative": ["Si, espera un momento."],
           "plosive": ["Perdón, espera un momento."], "short": ["Para."],
           "long": ["Perdona, eso no es lo que quería saber, quería saber el tiempo de mañana."]},
}
LANG_VOICE = {"en": "en-us", "de": "de", "fr": "fr", "es": "es"}
GENDER_VARIANTS = {"male": ["m3", "m1", "m7"], "female": ["f3", "f2", "f4"]}

ROBOT_TEXT = ("Hello there, I am the robot. Today the weather in the city is mild, with a light "
              "breeze from the west and a few clouds in the afternoon. I saw a red ball rolling "
              "across the kitchen floor, and the cat chased it under the table. If you want, I "
              "can tell you more about the news, the traffic on the way to work, or what is in "
              "the fridge for dinner tonight. Shall I read your messages as well?")


@dataclass(frozen=True)
class Condition:
    name: str = "base"
    rt60: float = 0.4                  # s
    speaker_cm: float = 15.0           # robot loudspeaker to mic
    person_m: float = 1.0              # person to mic
    noise: str = "babble"              # babble | fan | street | none
    snr_db: float = 20.0               # person's speech at the mic to the noise
    latency_ms: float = 40.0           # the loudspeaker's true latency (publish -> sound)
    echo_delay_ms: float = 40.0        # what omni_node is told (echo_delay_ms)
    gender: str = "male"
    lang: str = "en"
    wpm: int = 160
    onset: str = "vowel"               # vowel | fricative | plosive | short | long
    robot_voice: str = "model"         # model (tiny model speech) | speech (espeak-ng double)
    robot_level_db: float = 0.0        # the loudspeaker's 1 m level against the person's
    chunk_ms: int = 200                # speech_chunk_ms

    def node_key(self) -> Tuple:
        """Conditions with the same key can share one omni_node (its parameters)."""
        return (self.echo_delay_ms, self.chunk_ms, self.robot_voice)

    def seed(self, trial: int = 0) -> int:
        text = repr(sorted((k, v) for k, v in asdict(self).items() if k != "name")) + f"/{trial}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")

    def describe(self) -> str:
        return (f"RT60 {self.rt60:.1f} s, spk {self.speaker_cm:g} cm, person {self.person_m:g} m, "
                f"{self.noise} {self.snr_db:g} dB, latency {self.latency_ms:g} ms / echo_delay_ms "
                f"{self.echo_delay_ms:g}, {self.gender} {self.lang} {self.wpm} wpm, "
                f"{self.onset} onset, robot {self.robot_voice}"
                + (f" {self.robot_level_db:+g} dB" if self.robot_level_db else "")
                + f", {self.chunk_ms} ms chunks")


# -- speech -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _espeak(text: str, voice: str, wpm: int) -> np.ndarray:
    import soxr

    from omni_ros.flow.audio import s16_to_float
    from omni_ros.tools.scene_player import synthesize_speech
    samples, rate = synthesize_speech(text, voice=voice, words_per_minute=wpm)
    return soxr.resample(s16_to_float(samples), rate, RATE).astype(np.float32)


def espeak(text: str, voice: str = "en-us", wpm: int = 160) -> np.ndarray:
    """espeak-ng speech at 16 kHz, leading and trailing silence cut, active RMS at SPEECH_RMS."""
    x = _espeak(text, voice, int(wpm)).copy()
    frames = x[: x.shape[0] // 160 * 160].reshape(-1, 160)
    level = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    active = np.flatnonzero(level > level.max() * 10 ** (-40 / 20))
    x = x[active[0] * 160:(active[-1] + 1) * 160]
    return (x * SPEECH_RMS / max(active_rms(x), 1e-9)).astype(np.float32)


def active_rms(x: np.ndarray, floor_db: float = -40.0) -> float:
    """RMS over the 10 ms frames within `floor_db` of the loudest (speech, not its pauses)."""
    frames = np.asarray(x, np.float64)[: len(x) // 160 * 160].reshape(-1, 160)
    if frames.size == 0:
        return 0.0
    level = np.mean(frames ** 2, axis=1)
    keep = level > level.max() * 10 ** (floor_db / 10)
    return float(np.sqrt(np.mean(level[keep]))) if keep.any() else 0.0


def onset_index(x: np.ndarray, floor_db: float = -30.0) -> int:
    """The first sample of the first 10 ms frame within `floor_db` of the loudest frame."""
    frames = np.asarray(x, np.float64)[: len(x) // 160 * 160].reshape(-1, 160)
    level = np.mean(frames ** 2, axis=1)
    return int(np.argmax(level > level.max() * 10 ** (floor_db / 10))) * 160


def voice_name(lang: str, gender: str, variant: int = 0) -> str:
    options = GENDER_VARIANTS[gender]
    return f"{LANG_VOICE[lang]}+{options[variant % len(options)]}"


def phrase(c: Condition, trial: int) -> Tuple[np.ndarray, str, str]:
    """(dry 16 kHz speech at the 1 m level, text, espeak voice) of the person for a trial:
    the condition's onset class and language, phrases and voice variants taken in turn."""
    texts = PHRASES[c.lang][c.onset]
    text = texts[trial % len(texts)]
    voice = voice_name(c.lang, c.gender, trial // len(texts))
    return espeak(text, voice, c.wpm), text, voice


class RobotSpeech:
    """Real speech as the robot's voice at 24 kHz: a looped espeak-ng monologue in two voices,
    handed out window by window (the test double for the model's speech)."""

    def __init__(self, rate: int = 24000) -> None:
        import soxr
        parts = [espeak(ROBOT_TEXT, "en-us+m3", 165), espeak(ROBOT_TEXT, "en-gb+f3", 175)]
        gap = np.zeros(RATE // 4, np.float32)
        audio = np.concatenate([parts[0], gap, parts[1], gap])
        self.audio = soxr.resample(audio, RATE, rate).astype(np.float32) * 4.0   # ~ -14 dBFS
        self.position = 0

    def take(self, n: int) -> np.ndarray:
        idx = (self.position + np.arange(n)) % self.audio.shape[0]
        self.position = int((self.position + n) % self.audio.shape[0])
        return self.audio[idx]


# -- the room ------------------------------------------------------------------------------------
def _around(center, distance: float, rng: np.random.Generator, height: Optional[float] = None):
    """A point `distance` from `center` in a random horizontal direction that stays in the room
    (and, with `height`, at that height where the distance allows)."""
    cx, cy, cz = center
    for _ in range(200):
        az = rng.uniform(0, 2 * np.pi)
        dz = 0.0 if height is None else float(np.clip(height - cz, -distance * 0.8, distance * 0.8))
        horizontal = np.sqrt(max(distance ** 2 - dz ** 2, 0.0))
        p = (cx + horizontal * np.cos(az), cy + horizontal * np.sin(az), cz + dz)
        if all(0.25 < p[i] < ROOM_DIMS[i] - 0.25 for i in range(3)):
            return p
    raise ValueError(f"no point {distance} m from {center} inside the room")


class Room:
    """Image-source RIRs (pyroomacoustics) from the robot's loudspeaker, the person and babble
    talkers to the mic. Gains are physical (1/r in the RIR) and referred to 1 m: convolving a
    signal at its 1 m level with `rir(...)` gives it at the mic."""

    def __init__(self, rt60: float, speaker_cm: float, person_m: float, seed: int,
                 babble_talkers: int = 0) -> None:
        import pyroomacoustics as pra
        rng = np.random.default_rng(seed)
        absorption, max_order = pra.inverse_sabine(rt60, ROOM_DIMS)
        room = pra.ShoeBox(ROOM_DIMS, fs=RATE, materials=pra.Material(absorption),
                           max_order=min(max_order, 60), air_absorption=True)
        self.speaker_pos = _around(MIC_POS, speaker_cm / 100.0, rng)
        self.person_pos = _around(MIC_POS, person_m, rng, height=1.6)
        self.babble_pos = [_around(MIC_POS, rng.uniform(1.2, 2.4), rng, height=1.6)
                           for _ in range(babble_talkers)]
        for p in [self.speaker_pos, self.person_pos, *self.babble_pos]:
            room.add_source(list(p))
        room.add_microphone(list(MIC_POS))
        room.compute_rir()
        # pyroomacoustics' RIRs carry 1/(4 pi r) and a fractional-delay filter's lead: scale to
        # "1 at 1 m", and cut the common lead so a direct path at r arrives r / c late.
        lead = int(pra.constants.get("frac_delay_length")) // 2
        self.rirs = [np.asarray(h, np.float64)[lead:] * 4 * np.pi for h in room.rir[0]]
        self.rt60_measured = float(np.median(room.measure_rt60()[0]))
        self.direct_delay = {"speaker": speaker_cm / 100.0 / SOUND_SPEED,
                             "person": person_m / SOUND_SPEED}

    @property
    def speaker(self) -> np.ndarray:
        return self.rirs[0]

    @property
    def person(self) -> np.ndarray:
        return self.rirs[1]

    @property
    def babble(self) -> List[np.ndarray]:
        return self.rirs[2:]


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve
    return fftconvolve(np.asarray(x, np.float64), h).astype(np.float32)


# -- noise ---------------------------------------------------------------------------------------
BABBLE_TEXTS = ["I think the meeting moved to Thursday afternoon, did you hear about that?",
                "The train was late again this morning, so I walked from the station.",
                "We should order more coffee, the kitchen is almost out of it.",
                "Did you see the game last night, it went into extra time.",
                "My sister is visiting next week, she is bringing the children.",
                "The printer on the second floor is broken, use the one by the door."]
BABBLE_VOICES = ["en-us+m1", "en-gb+f2", "en-us+f4", "en-gb+m7", "en-us+m2", "en-us+f1"]


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    f[0] = f[1]
    x = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return x / np.sqrt(np.mean(x ** 2))


def noise(kind: str, seconds: float, seed: int, room: Optional[Room] = None) -> np.ndarray:
    """`seconds` of background noise at unit active RMS (scale it for the SNR)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    if kind == "none":
        return np.zeros(n, np.float32)
    if kind == "babble":
        if room is None or not room.babble:
            raise ValueError("babble needs a Room with babble talkers")
        out = np.zeros(n)
        for k, h in enumerate(room.babble):
            talker = np.concatenate([espeak(BABBLE_TEXTS[(k + j) % len(BABBLE_TEXTS)],
                                            BABBLE_VOICES[k % len(BABBLE_VOICES)], 150 + 10 * k)
                                     for j in range(len(BABBLE_TEXTS))])
            talker = np.roll(np.resize(talker, n), int(rng.integers(0, n)))
            out += convolve(talker, h)[:n]
    elif kind == "fan":
        from scipy.signal import butter, sosfilt
        broadband = sosfilt(butter(4, 900, fs=RATE, output="sos"), _colored(rng, n, 1.0))
        hum = sum(np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6.3)) / (k + 1)
                  for k, f0 in enumerate((118.0, 236.0, 354.0, 472.0)))
        blade = 1.0 + 0.15 * np.sin(2 * np.pi * 23.0 * t)
        out = (broadband / np.std(broadband) + 0.3 * hum) * blade
    elif kind == "street":
        from scipy.signal import butter, sosfilt
        rumble = sosfilt(butter(2, 500, fs=RATE, output="sos"), _colored(rng, n, 2.0))
        hiss = sosfilt(butter(2, [300, 4000], btype="band", fs=RATE, output="sos"),
                       _colored(rng, n, 1.0))
        swell = 1.0 + 0.5 * np.sin(2 * np.pi * t / rng.uniform(6, 12))
        cars = np.zeros(n)
        for at in rng.uniform(0, seconds, size=max(1, int(seconds / 8))):
            cars += np.exp(-0.5 * ((t - at) / 1.5) ** 2)       # a vehicle passing by
        out = (rumble / np.std(rumble) + 0.5 * hiss / np.std(hiss)) * swell * (0.6 + cars)
    else:
        raise ValueError(f"noise kind {kind!r}: babble | fan | street | none")
    out = np.asarray(out, np.float64)
    return (out / max(np.sqrt(np.mean(out ** 2)), 1e-12)).astype(np.float32)


# -- what the mic hears -------------------------------------------------------------------------
class EchoPath:
    """The robot's published speech (16 kHz, stamped on the ROS clock) as the mic hears it:
    times `gain`, through the loudspeaker-to-mic RIR, `latency_ms` after it was published.
    Chunks are overlap-added on the 16 kHz grid, so reverberation tails cross chunk edges."""

    def __init__(self, rir: np.ndarray, gain: float, latency_ms: float,
                 seconds: float = 60.0) -> None:
        self.rir = np.asarray(rir, np.float64)
        self.gain = float(gain)
        self.latency = int(round(latency_ms * RATE / 1000.0))
        self.size = int(seconds * RATE)
        self._data = np.zeros(self.size, np.float64)
        self._owner = np.full(self.size, -1, np.int64)
        self._end: Optional[int] = None     # grid index after the last chunk played

    def add(self, first: int, samples: np.ndarray) -> int:
        """`samples` published at grid index `first`: played from there, or right after the
        previous chunk when it comes within the loudspeaker's queue continuity (it plays its
        queue without gaps, whatever the publishing jitter; the rule omni_node's reference
        buffer assumes, flow/echo.playout_start). Returns where it was played."""
        from omni_ros.flow.echo import PLAYOUT_CONTINUITY_MS, playout_start
        first = playout_start(first, self._end, int(round(PLAYOUT_CONTINUITY_MS * RATE / 1000)))
        self._end = first + len(samples)
        self.overlap_add(first, samples)
        return first

    def overlap_add(self, first: int, samples: np.ndarray) -> None:
        """Add `samples` played from grid index `first` (a correction to what was played)."""
        heard = convolve(np.asarray(samples, np.float64) * self.gain, self.rir)
        idx = first + self.latency + np.arange(heard.shape[0])
        slots = idx % self.size
        stale = self._owner[slots] != idx
        self._data[slots[stale]] = 0.0
        self._owner[slots] = idx
        self._data[slots] += heard

    def get(self, first: int, n: int) -> np.ndarray:
        idx = first + np.arange(n)
        slots = idx % self.size
        return np.where(self._owner[slots] == idx, self._data[slots], 0.0).astype(np.float32)


class StreamResampler:
    """24 kHz speech chunks to the 16 kHz stream a loudspeaker's driver plays: one polyphase
    resampling (scipy's resample_poly, 2/3) over the whole stretch of back-to-back chunks, as a
    driver resamples its stream, not each chunk on its own (whose edges, filtered against
    silence, are not the robot's voice and which no linear echo canceller can model).

    A chunk's last few output samples depend on the next chunk's first input samples; they are
    given at once as if silence followed, and corrected by `play` when the next chunk comes
    (tens of ms before the loudspeaker reaches them). `play` returns the additions to make:
    (index in the stretch's 16 kHz samples, samples), the first the new chunk's output."""

    UP, DOWN = 2, 3
    CONTEXT = 96          # input samples before the new ones fed again: the filter's support

    def __init__(self) -> None:
        self._tail = np.zeros(0, np.float64)    # the stretch's last input samples
        self._tail_start = 0                    # their index in the stretch's input
        self._given = np.zeros(0, np.float64)   # outputs given without the next input yet
        self._given_start = 0
        self.samples_in = 0

    def play(self, chunk24: np.ndarray):
        from scipy.signal import resample_poly
        x = np.concatenate([self._tail, np.asarray(chunk24, np.float64)])
        start = self._tail_start                       # a multiple of DOWN
        self.samples_in += len(chunk24)
        y = resample_poly(x, self.UP, self.DOWN)       # output j is stretch output start*2/3 + j
        first_out = start * self.UP // self.DOWN
        additions = []
        if self._given.shape[0]:
            lo = self._given_start - first_out
            fixed = y[lo:lo + self._given.shape[0]]
            additions.append((self._given_start, fixed - self._given[:fixed.shape[0]]))
            new_from = self._given_start + self._given.shape[0]
        else:
            new_from = first_out
        total_out = self.samples_in * self.UP // self.DOWN
        new = y[new_from - first_out:total_out - first_out]
        additions.append((new_from, new))
        # The outputs near the end, filtered against the silence that may not follow.
        settled = max(new_from, total_out - self.CONTEXT * self.UP // self.DOWN)
        self._given = y[settled - first_out:total_out - first_out].copy()
        self._given_start = settled
        keep_from = max(0, (self.samples_in - 2 * self.CONTEXT) // self.DOWN * self.DOWN)
        self._tail = x[keep_from - start:]
        self._tail_start = keep_from
        return additions


class Scene:
    """One condition's room, noise and levels: the person's trials and the mic mix.

    Levels: the person (and each babble talker) at SPEECH_RMS at 1 m; the robot's reference
    scaled to that level too (`robot_gain`, times `robot_level_db`); the noise at `snr_db` below
    the person's speech at the mic; then one mic gain for all, so the loudest of the echo and
    the person peaks near -6 dBFS (a mic gain set so the robot's own voice does not clip)."""

    def __init__(self, c: Condition, robot_rms: float, noise_seconds: float = 40.0) -> None:
        self.c = c
        self.room = Room(c.rt60, c.speaker_cm, c.person_m, seed=c.seed(),
                         babble_talkers=6 if c.noise == "babble" else 0)
        # The person's level at the mic, for the SNR: a reference phrase through the room.
        probe = convolve(espeak(PHRASES["en"]["vowel"][0], "en-us+m3", 160), self.room.person)
        person_at_mic = active_rms(probe)
        self.noise = noise(c.noise, noise_seconds, seed=c.seed() + 1, room=self.room)
        self.noise *= person_at_mic * 10 ** (-c.snr_db / 20) if c.noise != "none" else 0.0
        # The loudest the robot's echo gets: full-scale robot speech at its level.
        echo_probe = convolve(espeak(ROBOT_TEXT[:120], "en-us+m3", 165) * 10 ** (c.robot_level_db / 20),
                              self.room.speaker)
        peak = max(float(np.max(np.abs(echo_probe))), float(np.max(np.abs(probe))))
        self.mic_gain = 0.5 / peak
        self.echo = EchoPath(self.room.speaker, 1.0, c.latency_ms)
        self.set_robot_rms(robot_rms)
        self.echo_to_person_db = 20 * np.log10(active_rms(echo_probe) / person_at_mic)

    def set_robot_rms(self, robot_rms: float) -> None:
        """The robot's speech level (active RMS of its published speech), which sets the echo's."""
        self.robot_gain = SPEECH_RMS / max(robot_rms, 1e-9) * 10 ** (self.c.robot_level_db / 20)
        self.echo.gain = self.robot_gain * self.mic_gain

    def person(self, trial: int) -> Tuple[np.ndarray, int, str, str]:
        """(the person's phrase at the mic, mic gain applied; the index of its onset at the mic
        (after the direct path's flight); text; voice)."""
        dry, text, voice = phrase(self.c, trial)
        wet = convolve(dry, self.room.person) * self.mic_gain
        return wet.astype(np.float32), onset_index(dry) + int(
            round(self.room.direct_delay["person"] * RATE)), text, voice

    def noise_at(self, first: int, n: int) -> np.ndarray:
        idx = (first + np.arange(n)) % self.noise.shape[0]
        return self.noise[idx] * self.mic_gain

    def summary(self) -> Dict[str, float]:
        return {"rt60_measured": round(self.room.rt60_measured, 2),
                "echo_to_person_db": round(float(self.echo_to_person_db), 1),
                "mic_gain": round(float(self.mic_gain), 3)}


def variant(base: Condition, name: str, **changes) -> Condition:
    return replace(base, name=name, **changes)
