"""``history.png``: the training history of a run at a glance, beside ``report.md``.

Every epoch of every phase in run order: the mean training loss (log scale, left) and, with a validation
split, the validation accuracy (right, 0-100%); phases are separated and named. Drawn with Pillow (a
dependency already) rather than matplotlib, whose import alone would add a quarter of a second to every run.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from prune_cli.storage.atomic import atomic_write_bytes

NAME = "history.png"
SIZE = (720, 300)
MARGIN = {"left": 56, "right": 56, "top": 34, "bottom": 30}
LOSS, ACCURACY, GRID, INK = (31, 119, 180), (255, 127, 14), (225, 225, 225), (40, 40, 40)


def draw_history(history: list[dict], path: Path) -> bool:
    """Write ``path`` (a PNG) from the report's ``history``; False (nothing written) when it is empty."""
    if not history:
        return False
    from PIL import Image, ImageDraw, ImageFont
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = SIZE[0] - MARGIN["right"], SIZE[1] - MARGIN["bottom"]
    n = len(history)
    x_of = (lambda i: (left + right) / 2) if n == 1 else (lambda i: left + i * (right - left) / (n - 1))

    losses = [max(float(e["loss"]), 1e-6) for e in history]
    low, high = math.floor(math.log10(min(losses))), math.ceil(math.log10(max(losses)))
    high = high if high > low else low + 1
    loss_y = lambda v: bottom - (math.log10(v) - low) / (high - low) * (bottom - top)  # noqa: E731
    for decade in range(low, high + 1):
        y = loss_y(10.0 ** decade)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((left - 6, y), f"1e{decade}", fill=LOSS, font=font, anchor="rm")
    draw.text((left, top - 18), "training loss (log)", fill=LOSS, font=font, anchor="lm")

    # Phase boundaries and names (train, round1.finetune, ...), a cached dense stage marked so.
    start = 0
    for i in range(1, n + 1):
        if i == n or history[i]["stage"] != history[start]["stage"]:
            name = history[start]["stage"] + (" (cached)" if history[start].get("cached") else "")
            room = (x_of(i - 1) - x_of(start)) + (right - left) / max(n - 1, 1)
            if draw.textlength(name, font=font) > room:  # a short phase: round2.finetune -> r2
                name = name.split(".")[0].replace("round", "r")
            draw.text(((x_of(start) + x_of(i - 1)) / 2, bottom + 14), name, fill=INK, font=font, anchor="mm")
            if i < n:
                x = (x_of(i - 1) + x_of(i)) / 2
                for y in range(int(top), int(bottom), 6):
                    draw.line([(x, y), (x, y + 3)], fill=INK)
            start = i
    if n > 1:
        draw.line([(x_of(i), loss_y(v)) for i, v in enumerate(losses)], fill=LOSS, width=2)
    for i, v in enumerate(losses):
        draw.ellipse([x_of(i) - 2, loss_y(v) - 2, x_of(i) + 2, loss_y(v) + 2], fill=LOSS)

    points = [(x_of(i), bottom - float(e["val_accuracy"]) * (bottom - top))
              for i, e in enumerate(history) if e.get("val_accuracy") is not None]
    if points:
        for pct in (0, 50, 100):
            draw.text((right + 6, bottom - pct / 100 * (bottom - top)), f"{pct}%", fill=ACCURACY, font=font,
                      anchor="lm")
        draw.text((right, top - 18), "validation accuracy", fill=ACCURACY, font=font, anchor="rm")
        if len(points) > 1:
            draw.line(points, fill=ACCURACY, width=2)
        for x, y in points:
            draw.rectangle([x - 2, y - 2, x + 2, y + 2], fill=ACCURACY)
    draw.rectangle([left, top, right, bottom], outline=INK)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: the file is small either way
    atomic_write_bytes(path, buffer.getvalue())
    return True
