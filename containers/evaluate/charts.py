"""evaluation.png: grouped bars of every score metric per model, drawn in pure Python (zlib PNG), so the evaluate
image needs no plotting library."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

# Bar colours (RGB), in the order the bars of a group are drawn: candidate, base, production, and the candidate
# before quantization.
CHART_COLORS = {
    "candidate": (31, 119, 180),
    "base": (160, 160, 160),
    "production": (255, 127, 14),
    "unquantized": (148, 103, 189),
}


def write_png(path: Path, width: int, height: int, pixels: list[bytearray]) -> None:
    """An 8-bit RGB PNG from rows of width*3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(row) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    )


def bar_chart(path: Path, metrics: dict[str, dict[str, float]], names: list[str]) -> dict[str, Any]:
    """Grouped bars (one group per metric in `names`, one bar per model, height = value in [0, 1]) on a white
    background with grid lines at 0.25 steps; returns the legend that evaluation.json records."""
    models = [m for m in CHART_COLORS if m in metrics]
    bar, gap, margin, plot_h = 24, 24, 20, 200
    width = margin * 2 + len(names) * (len(models) * bar + gap)
    height = plot_h + margin * 2
    pixels = [bytearray(b"\xff" * (width * 3)) for _ in range(height)]

    def fill(x0: int, x1: int, y0: int, y1: int, rgb: tuple[int, int, int]) -> None:
        for y in range(max(0, y0), min(height, y1)):
            row = pixels[y]
            for x in range(max(0, x0), min(width, x1)):
                row[3 * x : 3 * x + 3] = bytes(rgb)

    baseline = margin + plot_h
    for quarter in range(5):
        y = baseline - quarter * plot_h // 4
        fill(margin, width - margin, y, y + 1, (220, 220, 220))
    for g, name in enumerate(names):
        x = margin + gap // 2 + g * (len(models) * bar + gap)
        for k, model in enumerate(models):
            value = min(max(metrics[model].get(name, 0.0), 0.0), 1.0)
            top = baseline - round(value * plot_h)
            fill(x + k * bar + 2, x + (k + 1) * bar - 2, top, baseline + 1, CHART_COLORS[model])
    fill(margin, width - margin, baseline, baseline + 1, (0, 0, 0))
    write_png(path, width, height, pixels)
    return {
        "file": path.name,
        "groups_left_to_right": names,
        "bars_in_each_group": models,
        "colors_rgb": {m: CHART_COLORS[m] for m in models},
        "y_axis": "0 to 1, grid lines every 0.25",
    }
