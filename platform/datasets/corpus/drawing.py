"""The corpus's pictures: each instrument drawn with PIL primitives, a per-video scene, and its animated frames."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .config import INSTRUMENTS, CorpusConfig, Instrument
from .melody import Melody


def draw_instrument(icon: str, colour: tuple[int, int, int], size: int) -> Image.Image:
    """The instrument drawn with PIL primitives on a transparent square (a recognisable sketch, not art)."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = size

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (round(x0 * s), round(y0 * s), round(x1 * s), round(y1 * s))

    def pts(*xy: float) -> list[tuple[int, int]]:
        return [(round(xy[i] * s), round(xy[i + 1] * s)) for i in range(0, len(xy), 2)]

    dark = tuple(max(c - 90, 0) for c in colour)
    light = tuple(min(c + 70, 255) for c in colour)
    w = max(2, s // 40)
    if icon in ("violin", "cello"):  # two bouts, waist, f-holes, neck, scroll, strings, a bow
        # The cello is drawn wider, standing on its endpin, with the bow across lower down.
        k = 1.25 if icon == "cello" else 1.0

        def wide(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
            return box(0.5 - (0.5 - x0) * k, y0, 0.5 + (x1 - 0.5) * k, y1)

        d.ellipse(wide(0.32, 0.28, 0.68, 0.55), fill=colour)
        d.ellipse(wide(0.27, 0.48, 0.73, 0.86), fill=colour)
        d.rectangle(wide(0.36, 0.48, 0.64, 0.58), fill=colour)
        d.arc(wide(0.38, 0.52, 0.46, 0.70), 100, 260, fill=dark, width=w)
        d.arc(wide(0.54, 0.52, 0.62, 0.70), -80, 80, fill=dark, width=w)
        d.rectangle(box(0.475, 0.06, 0.525, 0.50), fill=dark)
        d.ellipse(box(0.45, 0.02, 0.55, 0.10), fill=dark)
        for x in (0.48, 0.495, 0.505, 0.52):
            d.line(pts(x, 0.08, x, 0.80), fill=(235, 235, 220), width=1)
        if icon == "cello":
            d.line(pts(0.5, 0.86, 0.5, 0.99), fill=(120, 120, 120), width=w)
            d.line(pts(0.05, 0.62, 0.95, 0.74), fill=(90, 60, 30), width=w)
        else:
            d.line(pts(0.12, 0.70, 0.90, 0.40), fill=(90, 60, 30), width=w)
    elif icon in ("guitar", "banjo", "bass"):
        if icon == "guitar":
            d.ellipse(box(0.22, 0.48, 0.78, 0.95), fill=colour)
            d.ellipse(box(0.30, 0.30, 0.70, 0.62), fill=colour)
            d.ellipse(box(0.42, 0.55, 0.58, 0.71), fill=(30, 20, 10))
        elif icon == "banjo":
            d.ellipse(box(0.20, 0.45, 0.80, 0.98), fill=dark)
            d.ellipse(box(0.24, 0.49, 0.76, 0.94), fill=(245, 240, 225))
        else:
            d.polygon(pts(0.30, 0.45, 0.70, 0.50, 0.76, 0.90, 0.50, 0.96, 0.24, 0.88, 0.36, 0.66), fill=colour)
        d.rectangle(box(0.46, 0.04, 0.54, 0.62), fill=(90, 55, 25))
        d.rectangle(box(0.43, 0.0, 0.57, 0.08), fill=(60, 35, 15))
        for x in (0.475, 0.49, 0.51, 0.525):
            d.line(pts(x, 0.05, x, 0.85), fill=(230, 230, 230), width=1)
    elif icon == "flute":  # a long silver tube, diagonal, with tone holes
        d.line(pts(0.08, 0.80, 0.92, 0.20), fill=colour, width=max(4, s // 12))
        d.line(pts(0.08, 0.80, 0.92, 0.20), fill=light, width=max(1, s // 40))
        for k in range(7):
            x = 0.30 + 0.08 * k
            y = 0.80 - (x - 0.08) * (0.60 / 0.84)
            d.ellipse(box(x - 0.018, y - 0.018, x + 0.018, y + 0.018), fill=(80, 80, 90))
    elif icon in ("clarinet", "bassoon"):  # a vertical reed tube; the clarinet flares into a bell
        d.rectangle(box(0.44, 0.06, 0.56, 0.82), fill=colour)
        if icon == "clarinet":
            d.polygon(pts(0.44, 0.80, 0.56, 0.80, 0.66, 0.96, 0.34, 0.96), fill=colour)
            d.polygon(pts(0.46, 0.0, 0.54, 0.0, 0.56, 0.06, 0.44, 0.06), fill=(60, 60, 60))
        else:
            d.line(pts(0.50, 0.10, 0.36, 0.02, 0.28, 0.10), fill=(170, 170, 175), width=w)  # the bocal
            d.rectangle(box(0.40, 0.40, 0.44, 0.96), fill=dark)
        for k in range(6):
            y = 0.20 + 0.10 * k
            d.ellipse(box(0.48, y, 0.52, y + 0.04), fill=(200, 200, 210))
    elif icon == "trumpet":  # horizontal tube, three valves, flared bell
        d.rectangle(box(0.10, 0.46, 0.70, 0.54), fill=colour)
        d.polygon(pts(0.66, 0.46, 0.92, 0.30, 0.92, 0.70, 0.66, 0.54), fill=colour)
        d.ellipse(box(0.88, 0.30, 0.96, 0.70), fill=dark)
        for x in (0.34, 0.42, 0.50):
            d.rectangle(box(x, 0.30, x + 0.05, 0.62), fill=dark)
        d.rounded_rectangle(box(0.24, 0.54, 0.62, 0.70), radius=max(2, s // 30), outline=colour, width=w)
        d.rectangle(box(0.04, 0.47, 0.12, 0.53), fill=(160, 160, 160))
    elif icon == "tuba":  # big coiled body and a wide bell pointing up
        d.ellipse(box(0.20, 0.40, 0.80, 0.95), outline=colour, width=max(6, s // 10))
        d.polygon(pts(0.40, 0.45, 0.60, 0.45, 0.80, 0.08, 0.20, 0.08), fill=colour)
        d.ellipse(box(0.18, 0.02, 0.82, 0.14), fill=dark)
        for x in (0.40, 0.47, 0.54):
            d.rectangle(box(x, 0.55, x + 0.05, 0.75), fill=dark)
    elif icon == "sax":  # a J: neck, body down, curve, bell up
        stroke = max(6, s // 9)
        d.line(pts(0.30, 0.06, 0.42, 0.12, 0.42, 0.70), fill=colour, width=stroke)
        d.arc(box(0.42 - 0.14, 0.56, 0.70, 0.92), 0, 180, fill=colour, width=stroke)
        d.polygon(pts(0.62, 0.74, 0.78, 0.74, 0.86, 0.44, 0.58, 0.44), fill=colour)
        d.ellipse(box(0.56, 0.40, 0.88, 0.50), fill=dark)
        for k in range(5):
            d.ellipse(box(0.39, 0.20 + 0.09 * k, 0.45, 0.26 + 0.09 * k), fill=light)
    elif icon == "accordion":  # two end boxes, pleated bellows, a keyboard on the right end
        d.rectangle(box(0.10, 0.15, 0.28, 0.85), fill=colour)
        d.rectangle(box(0.72, 0.15, 0.90, 0.85), fill=colour)
        for k in range(8):
            x0 = 0.28 + 0.055 * k
            pleat = pts(x0, 0.20, x0 + 0.0275, 0.15, x0 + 0.055, 0.20, x0 + 0.055, 0.80, x0 + 0.0275, 0.85, x0, 0.80)
            d.polygon(pleat, fill=(40, 40, 40) if k % 2 else (230, 230, 230))
        for k in range(8):
            y = 0.18 + 0.08 * k
            d.rectangle(box(0.76, y, 0.88, y + 0.06), fill=(250, 250, 250))
    elif icon == "piano":  # a keyboard
        d.rectangle(box(0.04, 0.30, 0.96, 0.74), fill=colour)
        for k in range(10):
            d.rectangle(box(0.06 + 0.088 * k, 0.44, 0.06 + 0.088 * k + 0.08, 0.72), fill=(250, 250, 250))
        for k in (0, 1, 3, 4, 5, 7, 8):
            x = 0.06 + 0.088 * k + 0.058
            d.rectangle(box(x, 0.44, x + 0.05, 0.60), fill=(10, 10, 10))
    elif icon == "xylophone":  # bars of decreasing length on two rails, two mallets
        d.line(pts(0.06, 0.30, 0.94, 0.40), fill=(90, 60, 30), width=w)
        d.line(pts(0.06, 0.82, 0.94, 0.72), fill=(90, 60, 30), width=w)
        for k in range(8):
            x = 0.08 + 0.105 * k
            inset = 0.012 * k
            d.rectangle(box(x, 0.24 + inset, x + 0.08, 0.88 - inset), fill=colour if k % 2 else light)
        for x0, x1 in ((0.20, 0.40), (0.80, 0.60)):
            d.line(pts(x0, 0.02, x1, 0.22), fill=(60, 40, 20), width=w)
            d.ellipse(box(x1 - 0.04, 0.18, x1 + 0.04, 0.26), fill=(230, 60, 60))
    elif icon == "bagpipe":  # a bag with three drones and a chanter
        d.ellipse(box(0.20, 0.35, 0.75, 0.85), fill=colour)
        for x, top in ((0.35, 0.02), (0.48, 0.08), (0.60, 0.14)):
            d.line(pts(x, 0.45, x + 0.10, top), fill=(40, 30, 20), width=w)
        d.line(pts(0.45, 0.82, 0.42, 0.98), fill=(40, 30, 20), width=w)
    else:
        raise ValueError(f"no picture for icon {icon!r}")
    return img


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: the same glyphs on every machine (system fonts would make frames machine-specific).
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Scene:
    """A video's look: everything drawn from its generator once, then animated per frame."""

    background: np.ndarray  # [H, W, 3] uint8, a vertical gradient of a per-video tint
    icon: Image.Image  # RGBA, tilted
    icon_xy: tuple[int, int]
    title: str
    title_xy: tuple[int, int]
    title_size: int
    text_colour: tuple[int, int, int]
    accent: tuple[int, int, int]


def make_scene(rng: np.random.Generator, label: str, config: CorpusConfig) -> Scene:
    w, h = config.width, config.height
    instrument = INSTRUMENTS[label]
    tint = rng.uniform(0.55, 0.95, size=3)
    shade = rng.uniform(0.75, 1.0)
    rows = np.linspace(1.0, shade, h)[:, None] * tint[None, :] * 255
    background = np.broadcast_to(rows[:, None, :], (h, w, 3)).round().astype(np.uint8).copy()
    icon_size = int(min(w, h) * rng.uniform(0.48, 0.62))
    icon = draw_instrument(instrument.icon, instrument.colour, icon_size)
    icon = icon.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC, expand=True)
    title_size = max(10, int(h * rng.uniform(0.08, 0.11)))
    title = label.replace("_", " ")
    title_w = _font(title_size).getbbox(title)[2]
    title_top = bool(rng.integers(0, 2))
    title_y = int(h * 0.04) if title_top else int(h - title_size * 1.3 - h * 0.06)
    title_x = int(rng.uniform(0.04 * w, max(0.04 * w, w - title_w - 0.04 * w)))
    free_top = title_size * 1.4 + h * 0.04 if title_top else 0
    free_bottom = h - (0 if title_top else title_size * 1.4 + h * 0.06)
    ix = int(rng.uniform(0, max(1, w - icon.width)))
    iy = int(rng.uniform(free_top, max(free_top + 1, free_bottom - icon.height)))
    luma = float(tint @ np.array([0.299, 0.587, 0.114]))
    text_colour = (20, 20, 20) if luma > 0.6 else (250, 250, 250)
    return Scene(background, icon, (ix, iy), title, (title_x, title_y), title_size, text_colour, instrument.colour)


def iter_frames(scene: Scene, melody: Melody, instrument: Instrument, fps: int) -> Iterator[bytes]:
    """Raw RGB frames, one at a time (long or large videos never sit in memory): the static scene, the
    instrument bobbing with the beat, sound-wave arcs at each note onset and a marker whose height follows
    the sounding pitch (picture and sound move together)."""
    base = Image.fromarray(scene.background)
    ImageDraw.Draw(base).text(scene.title_xy, scene.title, fill=scene.text_colour, font=_font(scene.title_size))
    h = base.height
    n_frames = round(melody.seconds * fps)
    onsets = np.array([n.start for n in melody.notes])
    for i in range(n_frames):
        t = i / fps
        frame = base.copy()
        bob = round(3 * math.sin(2 * math.pi * t * melody.tempo_bpm / 120.0))
        x, y = scene.icon_xy
        frame.paste(scene.icon, (x, y + bob), scene.icon)
        d = ImageDraw.Draw(frame)
        k = int(np.searchsorted(onsets, t, side="right")) - 1
        if k >= 0:
            note = melody.notes[k]
            cx, cy = x + scene.icon.width, y + scene.icon.height // 3
            age = t - note.start
            if age < 0.4:  # sound waves spreading from the instrument for a moment after each onset
                for r in range(1, 4):
                    rad = int(8 * r + 30 * age)
                    d.arc((cx - rad, cy - rad, cx + rad, cy + rad), -40, 40, fill=scene.accent, width=2)
            if t < note.end + 0.15:
                frac = (note.pitch - instrument.low) / max(instrument.high - instrument.low, 1)
                my = int(h * 0.9 - frac * h * 0.8)
                d.rectangle((4, my - 3, 14, my + 3), fill=scene.accent, outline=scene.text_colour)
        yield frame.tobytes()
