"""Contact sheets: many small images in one PNG, optionally captioned."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SCALE = 2  # 32 px images at 64 px: large enough to read, small enough for a 16-wide sheet
LABEL_H = 10  # pixels under each tile for its caption


def render_grid(images_uint8: np.ndarray, labels: list[str] | None, out_png, cols: int = 16) -> Path:
    """Tile (N, H, W, 3) uint8 images `cols` wide into `out_png`, with a caption under each if given."""
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images; pass one per image or None")
    n, h, w, _ = images.shape
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    th, tw = h * SCALE + (LABEL_H if labels else 0), w * SCALE
    sheet = Image.new("RGB", (cols * (tw + 2) + 2, rows * (th + 2) + 2), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, img in enumerate(images):
        x, y = 2 + (i % cols) * (tw + 2), 2 + (i // cols) * (th + 2)
        sheet.paste(Image.fromarray(img).resize((tw, h * SCALE), Image.NEAREST), (x, y))
        if labels:
            draw.text((x + 1, y + h * SCALE - 1), str(labels[i])[:10], fill=(230, 230, 230))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
