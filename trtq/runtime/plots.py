"""Two small bar charts drawn with Pillow (a dependency already; matplotlib is not): latency and layer classes."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLORS = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (120, 120, 120)]
W, H, LEFT, TOP, BOTTOM = 900, 420, 70, 40, 70


def _axes(title: str, top_value: float) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black")
    d.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - 20, H - BOTTOM)], fill="black")
    top_value = top_value if top_value > 0 else 1.0
    for i in range(5):
        v = top_value * i / 4
        y = H - BOTTOM - (H - BOTTOM - TOP) * i / 4
        d.line([(LEFT - 4, y), (LEFT, y)], fill="black")
        d.text((5, y - 6), f"{v:.3g}", fill="black")
    return img, d, (H - BOTTOM - TOP) / top_value


def _slots(n: int) -> tuple[float, float]:
    width = (W - 20 - LEFT) / max(n, 1)
    return width, width * 0.6


def bar_chart(bars: list[tuple[str, float, float]], title: str, path: Path) -> None:
    """One bar per (label, value, whisker) — whisker drawn as a line up to its value."""
    top = max([max(v, w) for _, v, w in bars] + [0.0]) * 1.1
    img, d, scale = _axes(title, top)
    slot, bar = _slots(len(bars))
    for i, (label, value, whisker) in enumerate(bars):
        x0 = LEFT + i * slot + (slot - bar) / 2
        d.rectangle([x0, H - BOTTOM - value * scale, x0 + bar, H - BOTTOM], fill=COLORS[i % len(COLORS)])
        xm = x0 + bar / 2
        d.line([(xm, H - BOTTOM - value * scale), (xm, H - BOTTOM - whisker * scale)], fill="black", width=2)
        d.text((x0, H - BOTTOM - value * scale - 14), f"{value:.3g}", fill="black")
        d.multiline_text((x0, H - BOTTOM + 6), label, fill="black")
    img.save(path)


def stacked_bars(stacks: list[tuple[str, list[tuple[str, float]]]], title: str, path: Path) -> None:
    """One stacked bar per label; segments in the same order and colours in every bar, with a legend."""
    top = max([sum(v for _, v in segs) for _, segs in stacks] + [0.0]) * 1.1
    img, d, scale = _axes(title, top)
    slot, bar = _slots(len(stacks))
    for i, (label, segs) in enumerate(stacks):
        x0 = LEFT + i * slot + (slot - bar) / 2
        y = H - BOTTOM
        for j, (_, v) in enumerate(segs):
            d.rectangle([x0, y - v * scale, x0 + bar, y], fill=COLORS[j % len(COLORS)])
            y -= v * scale
        d.text((x0, y - 14), f"{sum(v for _, v in segs):.3g}", fill="black")
        d.multiline_text((x0, H - BOTTOM + 6), label, fill="black")
    if stacks:
        for j, (name, _) in enumerate(stacks[0][1]):
            x = LEFT + 10 + j * 130
            d.rectangle([x, H - 22, x + 12, H - 10], fill=COLORS[j % len(COLORS)])
            d.text((x + 16, H - 22), name, fill="black")
    img.save(path)
