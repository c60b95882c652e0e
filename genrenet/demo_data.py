"""Synthetic "music genre" dataset: deterministic, license-free demo and test data.

Real genre collections (GTZAN and the like) cannot be shipped with genrenet, so the demo config
and the tests use songs synthesized here from numpy alone. The same arguments always give the
same WAV files (byte-identical on a given numpy build; other CPUs may differ in the last bit of a
few samples), so a demo run or a test failure can be reproduced.

What each genre sounds like:

- techno:  118-140 BPM four-on-the-floor kick, off-beat open hi-hats, claps, a plucky
           saw-wave bass on the off-beats, short minor-chord stabs.
- hiphop:  78-100 BPM swung boom-bap: syncopated kick, snare on 2 and 4, an 808 sub bass that
           follows the kick, mellow electric-piano minor 7th/9th chords, optional vinyl crackle.
- jazz:    95-170 BPM triplet swing: ride cymbal "ding ding-a ding", hi-hat on 2 and 4, soft
           brushes, a plucked walking bass and piano comping ii-V-I 7th chords.
- ambient: no drums; slow-attack detuned sine pads on major/lydian added-note chords,
           sparse inharmonic bell tones, a sub drone.
- metal:   95-170 BPM double kick, snare, crashes, palm-muted chugs and power chords through
           hard clipping (distortion), low-tuned minor/phrygian riffs.
- baroque: no drums; bright plucked "harpsichord" 16th-note arpeggios over an 8th-note bass
           line, circle-of-fifths progressions, sometimes a sustained string line.
- reggae:  66-92 BPM one-drop (kick and rim shot on beat 3, or steppers), staccato off-beat
           chord skanks, organ bubble, a round syncopated sine bass.

Every track randomizes tempo (the genre ranges overlap), key, which optional parts play,
mix levels, tuning, a spectral tilt, background noise of random colour at 10-30 dB SNR and the
overall gain, so no single trivial feature (loudness, tempo, brightness) separates the genres.
The rhythm and timbre patterns are still distinct enough for a small CNN on log-mel clips.

    python -m genrenet.demo_data data/demo --tracks-per-genre 30
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from genrenet.progress import progress as show_progress

GENRES: tuple[str, ...] = ("techno", "hiphop", "jazz", "ambient", "metal", "baroque", "reggae")

MARKER_NAME = ".demo-dataset.json"
# Bump when the synthesis changes, so datasets written by an older version are regenerated.
GENERATOR_VERSION = 1

# Pattern characters -> hit velocity; "." is a rest.
_VELOCITY = {"X": 1.0, "x": 0.8, "o": 0.55, "g": 0.3}

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_DORIAN = (0, 2, 3, 5, 7, 9, 10)
_HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
_PHRYGIAN = (0, 1, 3, 5, 7, 8, 10)
_LYDIAN = (0, 2, 4, 6, 7, 9, 11)


# --------------------------------------------------------------------------------------------
# Time and pitch


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _chord(scale: Sequence[int], root: int, degree: int, size: int = 3, skip: int = 2) -> list[int]:
    """MIDI notes of a chord stacked in thirds (skip=2) on a scale degree."""
    notes = []
    for i in range(size):
        octave, step = divmod(degree + skip * i, len(scale))
        notes.append(root + scale[step] + 12 * octave)
    return notes


@dataclass
class _Timeline:
    """Musical time of one track: beats -> sample indices, with swing and a random start."""

    sr: int
    n: int
    beat_s: float
    offset_s: float  # the track starts this far into the first bar, so tracks don't all begin on "one"
    humanize_s: float
    rng: np.random.Generator

    @property
    def n_bars(self) -> int:
        return int(math.ceil((self.n / self.sr + self.offset_s) / (4 * self.beat_s))) + 1

    def samples(self, beats) -> np.ndarray:
        beats = np.asarray(beats, dtype=np.float64)
        seconds = beats * self.beat_s - self.offset_s
        if self.humanize_s > 0:
            seconds = seconds + self.rng.normal(0.0, self.humanize_s, size=beats.shape)
        return np.round(seconds * self.sr).astype(np.int64)

    def pattern(self, pattern: str, swing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Beats and velocities of a one-bar pattern ("x..o....") repeated over the track.

        The pattern length sets the grid (16 = 16ths, 12 = triplet 8ths); swing delays every
        second step by that fraction of a step.
        """
        step_beats = 4.0 / len(pattern)
        steps = np.array([i for i, c in enumerate(pattern) if c != "."], dtype=np.float64)
        velocity = np.array([_VELOCITY[c] for c in pattern if c != "."], dtype=np.float64)
        if steps.size == 0:
            return np.zeros(0), np.zeros(0)
        positions = (steps + swing * (steps % 2)) * step_beats
        bars = np.arange(self.n_bars, dtype=np.float64)[:, None] * 4.0
        beats = (bars + positions[None, :]).ravel()
        return beats, np.tile(velocity, self.n_bars)


def _place(buf: np.ndarray, sound: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Add a sound into buf at a sample offset, cropping whatever falls outside."""
    s0, s1 = max(start, 0), min(start + len(sound), len(buf))
    if s0 < s1:
        buf[s0:s1] += gain * sound[s0 - start : s1 - start]


def _hits(buf: np.ndarray, tl: _Timeline, sound: np.ndarray, beats, velocity, rng: np.random.Generator) -> None:
    starts = tl.samples(beats)
    gains = np.asarray(velocity) * rng.uniform(0.85, 1.0, size=len(starts))  # no two hits identical
    for start, gain in zip(starts, gains):
        _place(buf, sound, int(start), float(gain))


# A note: (start beat, length in beats, MIDI pitch, velocity).
_Note = tuple[float, float, float, float]


def _play(
    buf: np.ndarray,
    tl: _Timeline,
    notes: Iterable[_Note],
    instrument: Callable[[float, int], np.ndarray],
    tune: float = 0.0,
) -> None:
    """Render notes with an instrument(freq, n_samples); repeated notes are synthesized once."""
    rendered: dict[tuple[float, int], np.ndarray] = {}
    for beat, length, midi, velocity in notes:
        start = int(tl.samples([beat])[0])
        n = max(int(length * tl.beat_s * tl.sr), 16)
        if start >= len(buf) or start + n <= 0:
            continue
        key = (midi, n)
        if key not in rendered:
            rendered[key] = instrument(_hz(midi + tune), n)
        _place(buf, rendered[key], start, velocity)


# --------------------------------------------------------------------------------------------
# Oscillators and filters (vectorized over partials x samples)


def _envelope(n: int, sr: int, attack_s: float, release_s: float) -> np.ndarray:
    i = np.arange(n, dtype=np.float32)
    attack = np.minimum(1.0, i / max(attack_s * sr, 1.0))
    release = np.minimum(1.0, (n - i) / max(release_s * sr, 1.0))
    return attack * release


def _partials(
    freq: float,
    n: int,
    sr: int,
    ratios,
    amps,
    decay_s: float | None = None,
    decay_tilt: float = 0.0,
    attack_s: float = 0.002,
    release_s: float = 0.01,
) -> np.ndarray:
    """Sum of sine partials at freq * ratios, each decaying faster the higher it is (decay_tilt)."""
    ratios = np.asarray(ratios, dtype=np.float32)
    amps = np.asarray(amps, dtype=np.float32)
    audible = ratios * freq < 0.45 * sr  # skip partials that would alias
    ratios, amps = ratios[audible], amps[audible]
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    if ratios.size == 0:
        return np.zeros(n, dtype=np.float32)
    # Fixed, spread-out start phases: in-phase partials would begin every note with a spike.
    phases = np.float32(2.0) * np.arange(ratios.size, dtype=np.float32)
    waves = np.sin(np.float32(2 * np.pi * freq) * ratios[:, None] * t[None, :] + phases[:, None])
    if decay_s is not None:
        rates = (1.0 + decay_tilt * (ratios - 1.0)) / np.float32(decay_s)
        waves *= np.exp(-rates[:, None] * t[None, :])
    return (amps @ waves) * _envelope(n, sr, attack_s, release_s)


def _saw(k: int) -> tuple[np.ndarray, np.ndarray]:
    ratios = np.arange(1, k + 1, dtype=np.float32)
    return ratios, 1.0 / ratios


def _square(k: int) -> tuple[np.ndarray, np.ndarray]:
    ratios = np.arange(1, 2 * k, 2, dtype=np.float32)
    return ratios, 1.0 / ratios


def _spectral_filter(x: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Zero-phase filter by multiplying the spectrum with gain(frequencies in Hz)."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / sr)
    return np.fft.irfft(spectrum * gain(freqs), n=len(x)).astype(np.float32)


def _band(lo: float, hi: float, order: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """Smooth band-pass magnitude response (Butterworth-like shoulders)."""

    def gain(f):
        f = np.maximum(f, 1e-3)
        highpass = 1.0 / np.sqrt(1.0 + (lo / f) ** (2 * order)) if lo > 0 else 1.0
        lowpass = 1.0 / np.sqrt(1.0 + (f / hi) ** (2 * order))
        return highpass * lowpass

    return gain


def _noise_burst(
    rng: np.random.Generator, sr: int, seconds: float, lo: float, hi: float, decay_s: float, attack_s: float = 0.0005
) -> np.ndarray:
    n = int(seconds * sr)
    nyquist = sr / 2
    noise = _spectral_filter(
        rng.standard_normal(n).astype(np.float32), sr, _band(min(lo, 0.6 * nyquist), min(hi, 0.95 * nyquist))
    )
    t = np.arange(n, dtype=np.float32) / sr
    env = np.exp(-t / decay_s) * np.minimum(1.0, t / attack_s)
    return _normalize_peak(noise * env)


def _normalize_peak(x: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x / peak if peak > 0 else x


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --------------------------------------------------------------------------------------------
# Drums: one template per track and drum, re-used (at varying velocity) for every hit


def _kick(
    rng, sr, f_start=(110, 200), f_end=(42, 60), sweep_s=(0.02, 0.05), decay_s=(0.18, 0.4), click=(0.05, 0.3)
) -> np.ndarray:
    """Pitch-swept sine plus a short click: the classic electronic/acoustic kick."""
    f0, f1 = rng.uniform(*f_start), rng.uniform(*f_end)
    tau, decay = rng.uniform(*sweep_s), rng.uniform(*decay_s)
    n = int(min(decay * 5, 1.0) * sr)
    t = np.arange(n, dtype=np.float32) / sr
    phase = 2 * np.pi * (f1 * t + (f0 - f1) * tau * (1 - np.exp(-t / tau)))
    body = np.sin(phase) * np.exp(-t / decay) * np.minimum(1.0, t / 0.001)
    tick = _noise_burst(rng, sr, n / sr, 1500, 8000, 0.004)
    return _normalize_peak(body + rng.uniform(*click) * tick)


def _snare(rng, sr, tone_mix=(0.3, 0.7), decay_s=(0.1, 0.22)) -> np.ndarray:
    n = int(0.5 * sr)
    t = np.arange(n, dtype=np.float32) / sr
    tone = np.sin(2 * np.pi * rng.uniform(170, 250) * t) * np.exp(-t / rng.uniform(0.04, 0.08))
    rattle = _noise_burst(rng, sr, 0.5, rng.uniform(800, 1800), 9000, rng.uniform(*decay_s))
    return _normalize_peak(rng.uniform(*tone_mix) * tone + rattle)


def _clap(rng, sr) -> np.ndarray:
    burst = _noise_burst(rng, sr, 0.3, 700, 3500, rng.uniform(0.08, 0.16))
    out = burst.copy()
    for echo in range(1, 3):  # a clap is a few hands slightly out of sync
        shift = int(echo * rng.uniform(0.008, 0.014) * sr)
        out[shift:] += 0.7 * burst[:-shift]
    return _normalize_peak(out)


def _hat(rng, sr, decay_s) -> np.ndarray:
    return _noise_burst(rng, sr, min(6 * decay_s, 1.0), rng.uniform(5500, 7500), 16000, decay_s)


def _cymbal(rng, sr, decay_s, bell=0.3) -> np.ndarray:
    """Ride/crash: bright noise plus a few inharmonic metallic partials."""
    seconds = min(4 * decay_s, 3.0)
    wash = _noise_burst(rng, sr, seconds, rng.uniform(2500, 4000), 16000, decay_s)
    base = rng.uniform(0.25, 0.4) * sr / 2
    ping = _partials(base, int(seconds * sr), sr, [1.0, 1.34, 1.71], [1.0, 0.7, 0.5], decay_s=decay_s * 0.8)
    return _normalize_peak(wash + bell * _normalize_peak(ping))


def _rim(rng, sr) -> np.ndarray:
    n = int(0.1 * sr)
    t = np.arange(n, dtype=np.float32) / sr
    knock = np.sin(2 * np.pi * rng.uniform(1400, 2100) * t) * np.exp(-t / 0.012)
    return _normalize_peak(knock + 0.6 * _noise_burst(rng, sr, 0.1, 2000, 6000, 0.01))


def _brush(rng, sr) -> np.ndarray:
    return _noise_burst(rng, sr, 0.5, 900, 6000, rng.uniform(0.12, 0.25), attack_s=0.02)


def _crackle(rng, sr, n) -> np.ndarray:
    """Vinyl crackle: sparse random clicks, high-passed."""
    clicks = np.zeros(n, dtype=np.float32)
    count = rng.poisson(rng.uniform(8, 30) * n / sr)
    clicks[rng.integers(0, n, size=count)] = rng.standard_normal(count) * rng.uniform(0.2, 1.0, size=count) ** 3
    return _spectral_filter(clicks, sr, _band(1500, 16000))


# --------------------------------------------------------------------------------------------
# Genres: each returns the parts of one track as (name, signal, level in dB)


@dataclass
class _Track:
    rng: np.random.Generator
    sr: int
    n: int
    tl: _Timeline
    root: int  # MIDI pitch class of the key (0 = C), before octave choice
    tune: float  # global tuning offset in semitones; bands are never perfectly at A=440

    def silence(self) -> np.ndarray:
        return np.zeros(self.n, dtype=np.float32)

    def drum(self, sound, pattern: str, swing: float = 0.0) -> np.ndarray:
        buf = self.silence()
        beats, velocity = self.tl.pattern(pattern, swing)
        _hits(buf, self.tl, sound, beats, velocity, self.rng)
        return buf

    def play(self, notes, instrument) -> np.ndarray:
        buf = self.silence()
        _play(buf, self.tl, notes, instrument, self.tune)
        return buf

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]


def _voice(
    sr: int,
    ratios,
    amps,
    decay_s: float | None = None,
    decay_tilt: float = 0.0,
    attack_s: float = 0.002,
    release_s: float = 0.01,
) -> Callable[[float, int], np.ndarray]:
    """An instrument(freq, n_samples) with a fixed partial recipe."""
    return functools.partial(
        _partials,
        sr=sr,
        ratios=ratios,
        amps=amps,
        decay_s=decay_s,
        decay_tilt=decay_tilt,
        attack_s=attack_s,
        release_s=release_s,
    )


def _steps(pattern: str) -> list[int]:
    return [i for i, c in enumerate(pattern) if c != "."]


def _techno(tr: _Track):
    rng, sr = tr.rng, tr.sr
    parts = [
        ("kick", tr.drum(_kick(rng, sr, decay_s=(0.2, 0.35)), "x...x...x...x..."), 0.0),
        ("open hat", tr.drum(_hat(rng, sr, rng.uniform(0.08, 0.2)), "..x...x...x...x."), -8.0),
    ]
    if tr.chance(0.7):
        hat = _hat(rng, sr, 0.03)
        pattern = tr.pick(["gggggggggggggggg", "g.g.g.g.g.g.g.g.", "ggxgggxgggxgggxg"])
        parts.append(("closed hats", tr.drum(hat, pattern), -14.0))
    if tr.chance(0.7):
        parts.append(("clap", tr.drum(_clap(rng, sr), "....x.......x..."), -7.0))
    scale = tr.pick([_MINOR, _PHRYGIAN, _DORIAN])
    root = 36 + tr.root
    progression = tr.pick([[0], [0, 0, 5, 5], [0, 0, 0, 6]])
    chord_of = lambda bar: progression[bar % len(progression)]  # noqa: E731
    bass_steps = tr.pick(["..x...x...x...x.", "..xx..xx..xx..xx", ".xxx.xxx.xxx.xxx", "..x..xx...x..x.x"])
    ratios, amps = _saw(16)
    bass = _voice(sr, ratios, amps, rng.uniform(0.1, 0.3), rng.uniform(0.2, 0.6))  # filter-envelope pluck
    notes = [
        (bar * 4 + s / 4, 0.25 * rng.uniform(0.8, 1.6), root + scale[chord_of(bar)], 1.0)
        for bar in range(tr.tl.n_bars)
        for s in _steps(bass_steps)
    ]
    parts.append(("saw bass", tr.play(notes, bass), -3.0))
    if tr.chance(0.6):
        stab_steps = tr.pick(["...x..x.........", "x.....x.....x...", "..x.......x..x..", "...x...x...x...x"])
        size = tr.pick([3, 4])
        stab = _voice(sr, ratios[:10], amps[:10], rng.uniform(0.08, 0.25), 0.4)
        notes = [
            (bar * 4 + s / 4, 0.5, note, 0.8)
            for bar in range(tr.tl.n_bars)
            for s in _steps(stab_steps)
            for note in _chord(scale, 24 + root, chord_of(bar), size)
        ]
        parts.append(("stabs", tr.play(notes, stab), -6.0))
    if tr.chance(0.25):
        parts.append(("pad", _pad_part(tr, scale, 48 + tr.root, [progression[0]], 4), -12.0))
    return parts


def _hiphop(tr: _Track):
    rng, sr = tr.rng, tr.sr
    swing = rng.uniform(0.1, 0.3)
    kick_pattern = tr.pick(["x.....x...x.....", "x......xx.x.....", "x..x......x..x..", "x.x.......x...x."])
    parts = [("kick", tr.drum(_kick(rng, sr, f_start=(90, 150), decay_s=(0.2, 0.4)), kick_pattern, swing), 0.0)]
    snare = _snare(rng, sr)
    parts.append(
        ("snare", tr.drum(snare, tr.pick(["....x.......x...", "....x..g....x..g", "....x.......x.g."]), swing), -2.0)
    )
    hat = _hat(rng, sr, rng.uniform(0.025, 0.06))
    hat_pattern = tr.pick(["x.o.x.o.x.o.x.o.", "xgoxxgoxxgoxxgox", "x.x.x.xox.x.x.xo"])
    parts.append(("hats", tr.drum(hat, hat_pattern, swing), -10.0))
    scale = tr.pick([_MINOR, _DORIAN])
    progression = tr.pick([[0, 3], [0, 5], [0, 5, 3, 4], [0, 0, 3, 3]])
    chord_of = lambda bar: progression[int(bar) % len(progression)]  # noqa: E731
    root = 36 + tr.root
    # The 808 doubles the kick: a long, pitched, slightly saturated sine.
    sine = _voice(sr, [1.0, 2.0], [1.0, 0.15], rng.uniform(0.4, 1.0), 0.5, 0.005, 0.03)
    kick_beats, _ = tr.tl.pattern(kick_pattern, swing)
    sub_root = root - 12 * (root >= 42)
    notes = [(b, 1.5, sub_root + scale[chord_of(b // 4)], 1.0) for b in kick_beats]
    if tr.chance(0.85):
        parts.append(("808", tr.play(notes, lambda f, n: np.tanh(1.5 * sine(f, n))), -2.0))
    size = tr.pick([4, 5])  # 7th or 9th chords
    epiano = _voice(sr, [1.0, 2.0, 3.0, 7.1], [1.0, 0.3, 0.08, 0.12], rng.uniform(0.8, 1.6), 0.6, 0.004, 0.05)
    rhythm = tr.pick([[(0.0, 4.0)], [(0.0, 1.5), (2.5, 1.5)], [(0.0, 2.0), (3.5, 0.5)]])
    notes = [
        (bar * 4 + start, length, note, 0.5)
        for bar in range(tr.tl.n_bars)
        for start, length in rhythm
        for note in _chord(scale, 24 + root, chord_of(bar), size)
    ]
    keys = tr.play(notes, epiano)
    tremolo = 1.0 + rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * rng.uniform(3, 6) * np.arange(tr.n) / sr)
    parts.append(("electric piano", keys * tremolo.astype(np.float32), -6.0))
    if tr.chance(0.5):
        parts.append(("vinyl", _crackle(rng, sr, tr.n), -22.0))
    return parts


def _jazz(tr: _Track):
    rng, sr = tr.rng, tr.sr
    ride = _cymbal(rng, sr, rng.uniform(0.4, 0.9), bell=0.5)
    parts = [
        ("ride", tr.drum(ride, tr.pick(["x..X.xx..X.x", "x..X.xx..X.o"])), -4.0),  # triplet grid: swing
        ("hat foot", tr.drum(_hat(rng, sr, 0.03), "...x.....x.."), -14.0),
    ]
    if tr.chance(0.6):
        ghosts = "".join(tr.pick(".....g") for _ in range(12))
        parts.append(("brushes", tr.drum(_brush(rng, sr), ghosts if "g" in ghosts else "........g..."), -12.0))
    if tr.chance(0.5):
        kick = _kick(rng, sr, f_start=(70, 110), decay_s=(0.15, 0.3), click=(0, 0.05))
        parts.append(("feathered kick", tr.drum(kick, "x..x..x..x.."), -14.0))
    major = tr.chance(0.7)
    scale = _MAJOR if major else _DORIAN
    if major:
        progression = tr.pick([[1, 4, 0, 0], [1, 4, 0, 5], [0, 5, 1, 4]])  # ii-V-I and friends
    else:
        progression = tr.pick([[0, 3], [0, 0, 3, 4]])
    root = 36 + (tr.root % 7)  # keep the walking bass in the upright's range
    chords = [_chord(scale, root, progression[bar % len(progression)], 4) for bar in range(tr.tl.n_bars + 1)]
    walk = []
    for bar in range(tr.tl.n_bars):
        chord, next_root = chords[bar], chords[bar + 1][0]
        # Root on one, chord tones in between, a neighbour note leading into the next root.
        line = [chord[0], tr.pick(chord[1:]), tr.pick(chord[1:3]), next_root + tr.pick([-1, 1, 2])]
        walk += [(bar * 4 + beat, 0.95, pitch, tr.pick([0.8, 1.0])) for beat, pitch in enumerate(line)]
    upright = _voice(sr, [1, 2, 3, 4, 5], [1.0, 0.6, 0.3, 0.15, 0.08], rng.uniform(0.35, 0.7), 0.5, 0.01, 0.05)
    parts.append(("walking bass", tr.play(walk, upright), 0.0))
    ratios, amps = _saw(10)
    piano = _voice(sr, ratios, amps**1.5, rng.uniform(0.8, 1.5), 0.3, 0.002, 0.04)
    comp = []
    for bar in range(tr.tl.n_bars):
        voicing = [p + 24 for p in chords[bar][1:]] + [chords[bar][0] + 26]  # rootless: 3rd 5th 7th 9th
        for step in sorted(rng.choice([0, 2, 3, 5, 6, 8, 9, 11], size=int(rng.integers(1, 4)), replace=False)):
            comp += [(bar * 4 + step / 3, rng.uniform(0.3, 1.2), p, rng.uniform(0.4, 0.7)) for p in voicing]
    parts.append(("piano", tr.play(comp, piano), -4.0))
    return parts


def _pad_part(tr: _Track, scale, root: int, progression, bars_per_chord: int, size: int = 4, skip: int = 2):
    sr, rng = tr.sr, tr.rng
    detune = rng.uniform(0.05, 0.15)  # semitones between the two voices: slow chorus beating
    attack, release = rng.uniform(0.4, 2.0), rng.uniform(0.5, 1.5)
    ratios = [1.0, 2.0, 3.0, 1.0 + detune / 12, 2.0 + detune / 6]  # close enough to 2**(detune/12)
    pad = _voice(sr, ratios, [1.0, 0.3, 0.1, 0.9, 0.25], None, 0.0, attack, release)
    length = 4 * bars_per_chord
    notes = [
        (i * length, length + 0.5, note, 0.5)
        for i in range(tr.tl.n_bars // bars_per_chord + 1)
        for note in _chord(scale, root, progression[i % len(progression)], size, skip)
    ]
    return tr.play(notes, pad)


def _ambient(tr: _Track):
    rng, sr = tr.rng, tr.sr
    scale = tr.pick([_MAJOR, _LYDIAN, _MAJOR])
    progression = tr.pick([[0, 3], [0, 5, 3, 4], [3, 0], [0, 1]])
    bars_per_chord, size, skip = tr.pick([1, 2]), tr.pick([3, 4]), tr.pick([2, 4])  # skip=4: open, quartal-ish
    parts = [("pad", _pad_part(tr, scale, 48 + tr.root, progression, bars_per_chord, size, skip), 0.0)]
    if tr.chance(0.8):
        count = rng.poisson(rng.uniform(0.4, 1.5) * tr.n / sr)
        bell = _voice(sr, [1.0, 2.76, 5.4, 8.93], [1.0, 0.4, 0.2, 0.1], rng.uniform(1.0, 2.5), 0.8)  # inharmonic
        beats = rng.uniform(0, tr.tl.n_bars * 4, size=count)
        notes = [
            (b, 6.0, 72 + tr.root + tr.pick([0, 2, 4, 7, 9]) + 12 * tr.pick([0, 0, 1]), rng.uniform(0.4, 1.0))
            for b in beats
        ]
        parts.append(("bells", tr.play(notes, bell), -6.0))
    if tr.chance(0.6):
        drone = _voice(sr, [1.0, 2.0], [1.0, 0.2], None, 0.0, 1.0, 1.0)
        parts.append(("drone", tr.play([(0.0, tr.tl.n_bars * 4, 36 + tr.root, 1.0)], drone), -6.0))
    if tr.chance(0.4):
        noise = rng.standard_normal(tr.n).astype(np.float32)
        wind = _spectral_filter(noise, sr, _band(rng.uniform(200, 600), rng.uniform(1500, 4000)))
        swell = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * np.arange(tr.n) / sr + rng.uniform(0, 6.3))
        parts.append(("wind", wind * swell.astype(np.float32), -14.0))
    return parts


def _metal(tr: _Track):
    rng, sr = tr.rng, tr.sr
    kick = _kick(rng, sr, f_start=(100, 160), decay_s=(0.08, 0.15), click=(0.4, 0.9))
    kick_pattern = tr.pick(["xxxxxxxxxxxxxxxx", "x.x.x.x.x.x.x.x.", "x.xxx.xxx.xxx.xx"])
    parts = [("double kick", tr.drum(kick, kick_pattern), -1.0)]
    snare = _snare(rng, sr, tone_mix=(0.4, 0.8))
    parts.append(("snare", tr.drum(snare, tr.pick(["....x.......x...", "..x...x...x...x."])), -2.0))
    if tr.chance(0.7):
        parts.append(("crash", tr.drum(_cymbal(rng, sr, rng.uniform(0.8, 1.6), bell=0.15), "x..............."), -6.0))
    if tr.chance(0.6):
        parts.append(("ride", tr.drum(_cymbal(rng, sr, 0.3, bell=0.4), "x.x.x.x.x.x.x.x."), -10.0))
    scale = tr.pick([_MINOR, _PHRYGIAN, _HARMONIC_MINOR])
    low = 35 + int(rng.integers(0, 9))  # B1..G2: drop tunings
    # c = palm-muted chug on the low root, P = ringing power chord until the next event.
    riff = tr.pick(["cccccccccccccccc", "c.ccc.ccc.ccP...", "P...c.c.P...c.cc", "cc.cc.cc.cc.P.P.", "P.......P...P..."])
    shifts = [tr.pick([0, scale[1], scale[2], scale[4], scale[5], scale[6]]) for _ in range(3)]
    notes = []
    for bar in range(tr.tl.n_bars):
        events = _steps(riff) + [16]
        for here, following in zip(events[:-1], events[1:]):
            start = bar * 4 + here / 4
            if riff[here] == "c":
                notes += [(start, 0.25, low + interval, 1.0) for interval in (0, 7)]
            else:
                shift = shifts[(bar + here) % len(shifts)]
                notes += [(start, (following - here) / 4, low + shift + interval, 0.9) for interval in (0, 7, 12)]
    ratios, amps = _saw(24)
    guitars = tr.silence()
    for detune in (-0.08, 0.08):  # double-tracked: two takes a few cents apart
        muted = _voice(sr, ratios, amps, rng.uniform(0.05, 0.12), 0.05)
        ringing = _voice(sr, ratios, amps, 2.0, 0.05)
        string = lambda f, n, muted=muted, ringing=ringing: (muted if n < 0.3 * sr else ringing)(f, n)  # noqa: E731
        take = tr.play([(b, d, p + detune, v) for b, d, p, v in notes], string)
        drive = rng.uniform(4, 15)
        guitars += np.tanh(drive * take / max(_rms(take), 1e-9))  # hard clipping = distortion
    cabinet = _band(rng.uniform(80, 120), rng.uniform(3500, 6000), order=3)  # a guitar speaker has no top end
    parts.append(("guitars", _spectral_filter(guitars, sr, cabinet), 0.0))
    return parts


def _baroque(tr: _Track):
    rng, sr = tr.rng, tr.sr
    major = tr.chance(0.7)
    scale = _MAJOR if major else _HARMONIC_MINOR
    progression = tr.pick([[0, 3, 6, 2, 5, 1, 4, 0], [0, 3, 4, 0], [0, 5, 3, 4], [0, 4, 5, 2, 3, 0, 3, 4]])
    root = 48 + tr.root % 9
    figure = tr.pick([[0, 1, 2, 3], [0, 2, 1, 2], [0, 1, 2, 1], [3, 2, 1, 0], [0, 2, 3, 1]])  # broken-chord shapes
    ratios = np.arange(1, 21, dtype=np.float32)
    brightness = rng.uniform(0.5, 0.9)
    harpsichord = _voice(sr, ratios, ratios**-brightness, rng.uniform(0.5, 1.2), rng.uniform(0.1, 0.3), 0.001, 0.02)
    beats_per_chord = tr.pick([2, 4])
    n_chords = tr.tl.n_bars * 4 // beats_per_chord + 1
    upper, lower = [], []
    for i in range(n_chords):
        degree = progression[i % len(progression)]
        chord = _chord(scale, root, degree, 3) + [root + 12 + scale[degree]]
        start = i * beats_per_chord
        upper += [(start + k / 4, 0.3, chord[figure[k % 4]] + 12, 0.6) for k in range(4 * beats_per_chord)]
        lower += [
            (start + k / 2, 0.55, chord[0] - 12 + (12 if k % 2 and tr.chance(0.5) else 0), 0.8)
            for k in range(2 * beats_per_chord)
        ]
    parts = [
        ("harpsichord right hand", tr.play(upper, harpsichord), 0.0),
        ("harpsichord left hand", tr.play(lower, harpsichord), -2.0),
    ]
    if tr.chance(0.4):
        saw_ratios, saw_amps = _saw(10)
        section = [
            _voice(sr, saw_ratios, saw_amps, None, 0.0, 0.15, 0.1),
            _voice(sr, saw_ratios, saw_amps, None, 0.0, 0.2, 0.1),
        ]
        bow = lambda f, n: section[0](f, n) + section[1](f * 1.004, n)  # noqa: E731  two players, never in tune
        fifths = [_chord(scale, root + 12, progression[i % len(progression)], 3)[2] for i in range(n_chords)]
        line = [(i * beats_per_chord, beats_per_chord, fifth, 0.5) for i, fifth in enumerate(fifths)]
        parts.append(("strings", tr.play(line, bow), -8.0))
    return parts


def _reggae(tr: _Track):
    rng, sr = tr.rng, tr.sr
    swing = rng.uniform(0.0, 0.15)
    steppers = tr.chance(0.3)  # kick on every beat, like techno, instead of the one drop
    kick_pattern = "x...x...x...x..." if steppers else "........x......."
    parts = [
        ("kick", tr.drum(_kick(rng, sr, decay_s=(0.2, 0.35)), kick_pattern, swing), 0.0),
        ("rim", tr.drum(_rim(rng, sr), "........x......."), -4.0),
    ]
    hat = _hat(rng, sr, rng.uniform(0.03, 0.07))
    parts.append(
        ("hats", tr.drum(hat, tr.pick(["x.o.x.o.x.o.x.o.", "xgogxgogxgogxgog", "..x...x...x...x."]), swing), -11.0)
    )
    major = tr.chance(0.6)
    scale = _MAJOR if major else _MINOR
    progression = tr.pick([[0, 3], [0, 4], [0, 3, 4, 3], [0, 6] if not major else [0, 5]])
    chord_of = lambda bar: progression[bar % len(progression)]  # noqa: E731
    root = 36 + tr.root % 8
    skank_steps = tr.pick(["..x...x...x...x.", "....x.......x...", "..x.x.x...x.x.x."])
    ratios, amps = _square(8)
    skank = _voice(sr, ratios, amps, rng.uniform(0.04, 0.1), 0.3, 0.002, 0.02)  # choked off-beat chords
    notes = [
        (bar * 4 + s / 4 + swing * (s % 2) / 4, 0.2, note, 0.7)
        for bar in range(tr.tl.n_bars)
        for s in _steps(skank_steps)
        for note in _chord(scale, root + 24, chord_of(bar), 3)
    ]
    parts.append(("skank", tr.play(notes, skank), -3.0))
    if tr.chance(0.5):
        organ = _voice(sr, [0.5, 1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 0.6, 0.3, 0.2], None, 0.0, 0.005, 0.02)
        bubble = [
            (bar * 4 + s / 4, 0.2, note, 0.4)
            for bar in range(tr.tl.n_bars)
            for s in range(1, 16, 2)
            for note in _chord(scale, root + 12, chord_of(bar), 3)
        ]
        parts.append(("organ bubble", tr.play(bubble, organ), -10.0))
    # (16th step, interval above the chord root); the bass mostly leaves beat one empty.
    bass_line = tr.pick(
        [
            [(2, 0), (3, 0), (6, 4), (8, 7), (10, 0), (11, 0), (14, 4)],
            [(0, 0), (3, 0), (6, 7), (8, 0), (11, 4), (14, 7)],
            [(2, 0), (4, 0), (7, 4), (10, 7), (12, 0)],
        ]
    )
    round_bass = _voice(sr, [1.0, 2.0, 3.0], [1.0, 0.25, 0.05], 1.5, 0.5, 0.01, 0.04)
    notes = [
        (bar * 4 + s / 4, rng.uniform(0.4, 0.8), root + scale[chord_of(bar)] + interval, 1.0)
        for bar in range(tr.tl.n_bars)
        for s, interval in bass_line
    ]
    parts.append(("bass", tr.play(notes, round_bass), 1.0))
    return parts


_COMPOSERS = {
    "techno": _techno,
    "hiphop": _hiphop,
    "jazz": _jazz,
    "ambient": _ambient,
    "metal": _metal,
    "baroque": _baroque,
    "reggae": _reggae,
}

# Tempo ranges overlap on purpose so that tempo alone cannot tell the genres apart.
_TEMPO = {
    "techno": (118, 140),
    "hiphop": (78, 100),
    "jazz": (95, 170),
    "ambient": (60, 90),
    "metal": (95, 170),
    "baroque": (80, 130),
    "reggae": (66, 92),
}
# Loose timing (seconds of jitter) for the played-by-hand genres.
_HUMANIZE = {"hiphop": 0.006, "jazz": 0.008, "reggae": 0.004, "baroque": 0.002}

assert set(_COMPOSERS) == set(GENRES) == set(_TEMPO)


# --------------------------------------------------------------------------------------------
# Mixing and mastering


def synthesize_track(genre: str, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One random track of a genre: float32 mono samples in [-1, 1]."""
    if genre not in _COMPOSERS:
        raise ValueError(f"unknown genre {genre!r}; choose from {', '.join(GENRES)}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    sr, n = int(sample_rate), int(round(seconds * sample_rate))
    tempo = rng.uniform(*_TEMPO[genre])
    beat_s = 60.0 / tempo
    tl = _Timeline(
        sr=sr, n=n, beat_s=beat_s, offset_s=rng.uniform(0, 4 * beat_s), humanize_s=_HUMANIZE.get(genre, 0.0), rng=rng
    )
    track = _Track(rng=rng, sr=sr, n=n, tl=tl, root=int(rng.integers(12)), tune=rng.uniform(-0.2, 0.2))

    mix = np.zeros(n, dtype=np.float64)
    for _name, part, level_db in _COMPOSERS[genre](track):
        rms = _rms(part)
        if rms > 0:
            # Parts are levelled by RMS so note density doesn't decide the balance; the jitter
            # makes every track's mix a little different.
            mix += part * (10 ** ((level_db + rng.uniform(-4, 4)) / 20) / rms)
    return _master(mix, sr, rng)


def _master(mix: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Random recording chain: spectral tilt, coloured noise at 10-30 dB SNR, gain, limiting."""
    n = len(mix)
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / sr), 20.0)
    tilt = (freqs / 1000.0) ** rng.uniform(-0.4, 0.3)  # about -2.4..+1.8 dB per octave
    if rng.random() < 0.4:  # some tracks sound dull, as if from an old recording
        tilt = tilt * _band(0, rng.uniform(2500, 7000))(freqs)
    music = np.fft.irfft(np.fft.rfft(mix) * tilt, n=n)
    colour = rng.uniform(0.0, 2.0)  # 0 = white, 1 = pink, 2 = brown
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * freqs ** (-colour / 2), n=n)
    snr_db = rng.uniform(10, 30)
    noise *= _rms(music) / max(_rms(noise), 1e-12) * 10 ** (-snr_db / 20)
    out = music + noise
    out *= 10 ** (rng.uniform(-30, -12) / 20) / max(_rms(out), 1e-12)
    peak = np.max(np.abs(out))
    if peak > 0.99:  # a limiter, not a clip: keep the waveform shape
        out *= 0.99 / peak
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Dataset on disk


def track_seed(seed: int, genre: str, index: int) -> np.random.SeedSequence:
    """The seed of one track: stable whatever other genres or track counts are asked for."""
    return np.random.SeedSequence([int(seed), zlib.crc32(genre.encode()), int(index)])


def _expected_files(out_dir: Path, genres: Sequence[str], tracks_per_genre: int) -> list[Path]:
    return [out_dir / g / f"{g}.{i:05d}.wav" for g in genres for i in range(tracks_per_genre)]


def _generated_files(out_dir: Path) -> list[Path]:
    """Files in out_dir named like ones this module writes (<genre>/<genre>.NNNNN.wav)."""
    found = []
    for genre in GENRES:
        if (out_dir / genre).is_dir():
            pattern = re.compile(re.escape(genre) + r"\.\d{5}\.wav")
            found += [p for p in (out_dir / genre).iterdir() if pattern.fullmatch(p.name)]
    return sorted(found)


def _settings(tracks_per_genre, seconds, sample_rate, seed, genres) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "tracks_per_genre": int(tracks_per_genre),
        "seconds": float(seconds),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "genres": list(genres),
    }


def _write_marker(out_dir: Path, settings: dict, complete: bool) -> None:
    tmp = out_dir / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps({**settings, "complete": complete}, indent=2) + "\n")
    os.replace(tmp, out_dir / MARKER_NAME)  # atomic: a reader never sees half a marker


def is_up_to_date(out_dir, tracks_per_genre=30, seconds=8.0, sample_rate=16000, seed=0, genres=GENRES) -> bool:
    """True when out_dir holds exactly the dataset these arguments would generate."""
    out_dir = Path(out_dir)
    try:
        recorded = json.loads((out_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if recorded != {**_settings(tracks_per_genre, seconds, sample_rate, seed, genres), "complete": True}:
        return False
    expected = _expected_files(out_dir, genres, tracks_per_genre)
    if _generated_files(out_dir) != sorted(expected):
        return False
    frames = int(round(seconds * sample_rate))
    return all(_intact(path, frames, sample_rate) for path in expected)


def _intact(path: Path, frames: int, sample_rate: int) -> bool:
    try:
        info = sf.info(str(path))
    except (OSError, RuntimeError):  # soundfile raises LibsndfileError (a RuntimeError) for damaged files
        return False
    return info.frames == frames and info.samplerate == sample_rate and info.channels == 1


def generate_dataset(
    out_dir,
    tracks_per_genre: int = 30,
    seconds: float = 8.0,
    sample_rate: int = 16000,
    seed: int = 0,
    genres: Sequence[str] = GENRES,
    progress: bool = True,
) -> Path:
    """Write out_dir/<genre>/<genre>.NNNNN.wav (16-bit PCM) and return out_dir.

    Deterministic: the same arguments give byte-identical files (on the same numpy build).
    When out_dir already holds this exact dataset (see is_up_to_date) nothing is written.
    Otherwise the tracks are written again and stale ones from an earlier demo dataset removed;
    other files are left alone. A folder with genre-named audio that this module did not write
    (a real GTZAN copy, say) raises FileExistsError instead of being overwritten.
    """
    out_dir = Path(out_dir)
    genres = list(genres)
    unknown = [g for g in genres if g not in _COMPOSERS]
    if unknown or not genres or len(set(genres)) != len(genres):
        raise ValueError(f"genres must be distinct names from {', '.join(GENRES)}; got {genres}")
    if tracks_per_genre < 1:
        raise ValueError(f"tracks_per_genre must be at least 1, got {tracks_per_genre}")
    if seconds <= 0 or sample_rate < 8000 or seed < 0:
        raise ValueError(
            f"need seconds > 0, sample_rate >= 8000 and seed >= 0; got {seconds}, {sample_rate} and {seed}"
        )
    if is_up_to_date(out_dir, tracks_per_genre, seconds, sample_rate, seed, genres):
        return out_dir

    previous = _generated_files(out_dir)
    if previous and not (out_dir / MARKER_NAME).exists():
        raise FileExistsError(
            f"{out_dir} already holds audio that genrenet.demo_data did not write "
            f"(for example {previous[0]}); choose a new or empty folder"
        )
    settings = _settings(tracks_per_genre, seconds, sample_rate, seed, genres)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_marker(out_dir, settings, complete=False)  # claims the folder; an interrupted run is not complete
    expected = _expected_files(out_dir, genres, tracks_per_genre)
    for stale in set(previous) - set(expected):
        stale.unlink()
    for genre in GENRES:  # drop genre folders the stale tracks leave empty
        if genre not in genres and (out_dir / genre).is_dir() and not any((out_dir / genre).iterdir()):
            (out_dir / genre).rmdir()
    for genre in genres:
        (out_dir / genre).mkdir(exist_ok=True)

    jobs = [(genre, index) for genre in genres for index in range(tracks_per_genre)]
    for (genre, index), path in zip(
        (show_progress(jobs, desc="demo dataset", unit="track") if progress else jobs), expected
    ):
        rng = np.random.default_rng(track_seed(seed, genre, index))
        sf.write(path, synthesize_track(genre, seconds, sample_rate, rng), sample_rate, subtype="PCM_16")
    _write_marker(out_dir, settings, complete=True)
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m genrenet.demo_data",
        description="Write the synthetic demo genre dataset (deterministic WAV files).",
    )
    parser.add_argument("out_dir", help="folder to write <genre>/<genre>.NNNNN.wav into")
    parser.add_argument("--tracks-per-genre", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = dict(
        tracks_per_genre=args.tracks_per_genre, seconds=args.seconds, sample_rate=args.sample_rate, seed=args.seed
    )
    try:
        present = is_up_to_date(args.out_dir, **settings)
        out = generate_dataset(args.out_dir, **settings)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    total = len(GENRES) * args.tracks_per_genre
    what = "already up to date" if present else "wrote"
    print(
        f"{what}: {total} tracks ({len(GENRES)} genres x {args.tracks_per_genre}, "
        f"{args.seconds:g} s at {args.sample_rate} Hz, seed {args.seed}) in {out}"
    )


if __name__ == "__main__":
    main()
