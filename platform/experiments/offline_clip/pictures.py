"""Captioned pictures of instruments, drawn from nothing, to train the offline demo's CLIP-style encoder.

The pictures reuse the corpus's instrument drawings (the same visual concept a real CLIP would have seen in
photos), but never a corpus frame: other seeds, poses (any tilt, mirrored), sizes, colours (the class colour
jittered, or any colour at all), backgrounds (gradients, flat tints, grain) and distractors (random letters,
sound-wave arcs, small marks) that carry no class, so the encoder learns the instrument's shape and not the
corpus's layout. Captions come in several phrasings; "a photo of playing {name}" (the evaluation's query) is
deliberately not one of them, so the zero-shot accuracy on the corpus also measures a phrasing never seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipsynth_platform.datasets.corpus.config import INSTRUMENTS
from clipsynth_platform.datasets.corpus.drawing import draw_instrument

PICTURE_SIZE = (160, 120)  # width, height: the corpus's 4:3 frames at half their size


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    tint = rng.uniform(0.2, 1.0, size=3)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # a vertical gradient
        rows = np.linspace(1.0, rng.uniform(0.5, 1.0), height)[:, None] * tint[None] * 255
        bg = np.broadcast_to(rows[:, None, :], (height, width, 3))
    elif kind == 1:  # a flat tint
        bg = np.broadcast_to(tint * 255, (height, width, 3))
    else:  # grain of a random strength
        bg = tint * 255 + rng.normal(0, rng.uniform(3, 20), size=(height, width, 3))
    return np.clip(bg, 0, 255).round().astype(np.uint8)


def draw_picture(
    label: str, rng: np.random.Generator, size: tuple[int, int] = PICTURE_SIZE, class_colour_prob: float = 0.7
) -> np.ndarray:
    """One picture of `label`'s instrument, uint8 [H, W, 3]; every choice comes from `rng`."""
    width, height = size
    instrument = INSTRUMENTS[label]
    img = Image.fromarray(_background(rng, width, height))
    if rng.random() < class_colour_prob:
        jitter = np.array(instrument.colour) * rng.uniform(0.7, 1.3) + rng.normal(0, 20, 3)
        r, g, b = (int(c) for c in np.clip(jitter, 0, 255))
        colour = (r, g, b)
    else:
        colour = _colour(rng)
    icon = draw_instrument(instrument.icon, colour, int(min(width, height) * rng.uniform(0.35, 0.85)))
    if rng.random() < 0.5:
        icon = icon.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    icon = icon.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BICUBIC, expand=True)
    # Up to 15% of the instrument may leave the picture, as a centre crop cuts it in a frame.
    x = int(rng.uniform(-0.15 * icon.width, max(1.0, width - 0.85 * icon.width)))
    y = int(rng.uniform(-0.15 * icon.height, max(1.0, height - 0.85 * icon.height)))
    img.paste(icon, (x, y), icon)
    d = ImageDraw.Draw(img)
    if rng.random() < 0.6:  # random letters: text in a picture is not its class
        letters = rng.integers(0, 30, int(rng.integers(4, 16)))
        word = "".join(chr(97 + int(k)) if k < 26 else " " for k in letters)
        font = ImageFont.load_default(size=int(rng.integers(8, 16)))
        d.text(
            (int(rng.integers(0, width // 2)), int(rng.integers(0, height - 14))), word, fill=_colour(rng), font=font
        )
    if rng.random() < 0.4:  # sound-wave arcs somewhere
        cx, cy, col = int(rng.integers(0, width)), int(rng.integers(0, height)), _colour(rng)
        for r in range(1, 4):
            rad = int(4 * r + rng.integers(0, 10))
            d.arc((cx - rad, cy - rad, cx + rad, cy + rad), -40, 40, fill=col, width=1)
    if rng.random() < 0.4:  # a small mark
        mx, my = int(rng.integers(0, width - 6)), int(rng.integers(0, height - 4))
        d.rectangle((mx, my, mx + 5, my + 3), fill=_colour(rng))
    return np.asarray(img)


def draw_pictures(
    classes: Sequence[str], per_class: int, seed: int, size: tuple[int, int] = PICTURE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` pictures of every class: (uint8 [C * per_class, H, W, 3], class index per picture)."""
    rng = np.random.default_rng([seed, 0x0FF11E])
    images = [draw_picture(label, rng, size) for label in classes for _ in range(per_class)]
    targets = np.repeat(np.arange(len(classes)), per_class)
    return np.stack(images), targets
