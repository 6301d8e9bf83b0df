"""Procedural 32x32 scenes of buildings (label 0) and houses (label 1).

Every image depends on (seed, index) only: each index draws its own parameter vector from
`np.random.default_rng([seed, index])`, then the whole batch is painted at once with numpy
masks, so a batch of any composition or order gives the same pixels per index.
"""
from __future__ import annotations

import numpy as np

SIZE = 32
BUILDING, HOUSE = 0, 1
N_PARAMS = 64  # uniforms per image; fixed so adding a feature never shifts the others
CHUNK = 512  # images painted at once: keeps the masks in cache (~2.5x faster than 5,000 at once)
N_LIT = 100  # window-lit bits per image: a 10x10 grid covers the tallest building
HOUSE_Q, BUILDING_Q = slice(24, 40), slice(40, 56)  # each structure's own parameters
CLOUD_SHOWN, TREE_SHOWN = 0.6, 0.55  # a cloud or tree is drawn when its parameter is below this

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_YY, _XX = _YY[None] + 0.5, _XX[None] + 0.5  # pixel centres, (1, H, W)

HOUSE_WALLS = np.array([[225, 210, 180], [240, 235, 220], [235, 215, 140], [170, 195, 215],
                        [175, 80, 60], [160, 115, 75], [200, 170, 200]], np.float32)
ROOFS = np.array([[170, 50, 40], [110, 65, 40], [70, 70, 80], [60, 90, 125], [130, 45, 30]], np.float32)
DOORS = np.array([[95, 55, 30], [140, 30, 30], [40, 70, 110], [50, 90, 60]], np.float32)
TOWER_WALLS = np.array([[150, 150, 155], [110, 115, 125], [60, 80, 115], [165, 95, 70],
                        [200, 190, 160], [85, 85, 90], [130, 160, 175]], np.float32)
GROUNDS = np.array([[80, 145, 60], [60, 120, 50], [150, 140, 85], [125, 125, 120]], np.float32)
FOLIAGE = np.array([[40, 120, 45], [70, 140, 50], [30, 90, 40], [110, 150, 60]], np.float32)


def _ints(u, lo, hi):
    """Map uniforms in [0, 1) to integers in [lo, hi] (hi may be an array)."""
    return (lo + np.floor(u * (np.asarray(hi) - lo + 1))).astype(np.int64)


def _pick(palette, u, v, jitter=18.0):
    """A palette colour per image, jittered in brightness so no two scenes repeat exactly."""
    return palette[_ints(u, 0, len(palette) - 1)] + ((v - 0.5) * 2 * jitter)[:, None]


def _c(a):
    """Per-image scalars to (N, 1, 1) for broadcasting against the pixel grid."""
    a = np.asarray(a)
    a = a if a.dtype == bool else a.astype(np.float32)
    return a[:, None, None] if a.ndim else a


def _rect(x0, x1, y0, y1):
    return (_XX >= _c(x0)) & (_XX < _c(x1)) & (_YY >= _c(y0)) & (_YY < _c(y1))


def _ellipse(cx, cy, rx, ry):
    return ((_XX - _c(cx)) / _c(rx)) ** 2 + ((_YY - _c(cy)) / _c(ry)) ** 2 <= 1.0


def _paint(img, mask, color):
    """img (N, 3, H, W) float32; mask (N, H, W) bool; color (N, 3).

    Channel-first so each copy writes one contiguous plane: ~3x faster than a (..., 3) where-copy.
    """
    color = np.asarray(color, np.float32)
    for ch in range(3):
        np.copyto(img[:, ch], color[:, ch, None, None], where=mask)


def _params(indices, seed):
    rows = [np.random.default_rng([seed, int(i)]).random(N_PARAMS + N_LIT) for i in indices]
    p = np.asarray(rows, np.float32).reshape(len(indices), N_PARAMS + N_LIT)
    return p[:, :N_PARAMS], p[:, N_PARAMS:]


def _sky_and_ground(img, p, dusk, ground_y):
    top = np.where(dusk[:, None], [70, 55, 120], [60, 120, 205]) + (p[:, 3:4] - 0.5) * 30
    horizon = np.where(dusk[:, None], [245, 150, 95], [175, 210, 240]) + (p[:, 4:5] - 0.5) * 30
    t = np.broadcast_to(_YY / _c(ground_y), img[:, 0].shape)  # (N, H, W): 0 at the top, 1 at the horizon
    for ch in range(3):
        img[:, ch] = _c(top[:, ch]) + _c(horizon[:, ch] - top[:, ch]) * t
    cloud = np.where(dusk[:, None], [235, 175, 165], [245, 248, 250])
    for k in range(2):  # up to two clouds, each two overlapping puffs
        c = p[:, 5 + 4 * k: 9 + 4 * k]
        cx, cy, rx = c[:, 0] * 36 - 2, 2.5 + c[:, 1] * 8, 2.5 + c[:, 2] * 3.5
        shown = _c(c[:, 3] < CLOUD_SHOWN)
        _paint(img, shown & (_ellipse(cx, cy, rx, 1.6) | _ellipse(cx + rx * 0.4, cy - 1, rx * 0.6, 1.5)), cloud)
    _paint(img, _YY >= _c(ground_y), _ground_colour(p, dusk))


def _ground_colour(p, dusk):
    return _pick(GROUNDS, p[:, 13], p[:, 14], 12) * np.where(dusk, 0.75, 1.0)[:, None]


def _trees(img, p, dusk, ground_y, x0, x1):
    """Up to two trees beside the structure, drawn behind it."""
    for k, side in enumerate((-1, 1)):
        t = p[:, 15 + 4 * k: 19 + 4 * k]
        r = 2.0 + t[:, 0] * 1.8
        gap = 1.0 + t[:, 1] * 3
        cx = np.where(side < 0, x0 - gap - r, x1 + gap + r)
        trunk_h = 2 + _ints(t[:, 2], 0, 2)
        shown = _c(t[:, 3] < TREE_SHOWN)
        _paint(img, shown & _rect(cx - 0.5, cx + 0.5, ground_y - trunk_h, ground_y), np.full((len(p), 3), [90, 60, 35]))
        leaves = _pick(FOLIAGE, t[:, 1], t[:, 0], 12) * np.where(dusk, 0.7, 1.0)[:, None]
        _paint(img, shown & _ellipse(cx, ground_y - trunk_h - r + 0.8, r, r * 1.1), leaves)


def _extent(q, lo, hi):
    """Left edge and width of the structure: width in [lo, hi], fully inside the frame."""
    w = _ints(q[:, 0], lo, hi)
    return 1 + np.floor(q[:, 2] * (31 - w)).astype(np.int64), w


def _house_shape(q):
    """Left edge, width, body height and roof height of each house, from its parameters q."""
    x0, w = _extent(q, 14, 21)
    return x0, w, _ints(q[:, 1], 7, 10), 4 + _ints(q[:, 6], 0, 4)


def _house_wall(q, dusk):
    return _pick(HOUSE_WALLS, q[:, 3], q[:, 4]) * np.where(dusk, 0.8, 1.0)[:, None]


def _house(img, p, _lit_bits, dusk, ground_y):
    q = p[:, HOUSE_Q]
    x0, w, h, rh = _house_shape(q)
    x1, y0 = x0 + w, ground_y - h
    shade = np.where(dusk, 0.8, 1.0)[:, None]
    _paint(img, _rect(x0, x1, y0, ground_y), _house_wall(q, dusk))
    # pitched roof: a triangle from the eaves (overhang 1-2 px) up to the ridge at the centre
    over = _ints(q[:, 5], 1, 2)
    half, cx, apex = w / 2 + over, (x0 + x1) / 2, y0 - rh
    depth = (_YY - _c(apex)) / _c(rh)  # 0 at the ridge, 1 at the eaves
    roof = (depth >= 0) & (_YY < _c(y0)) & (np.abs(_XX - _c(cx)) <= _c(half) * depth + 0.5)
    chimney = _rect(cx + w / 4, cx + w / 4 + 2, apex + 1, y0 - 1) & _c(q[:, 7] < 0.5)
    roof_c = _pick(ROOFS, q[:, 8], q[:, 9], 12) * shade
    _paint(img, chimney, roof_c * 0.7)
    _paint(img, roof, roof_c)
    # a door on the left or right third, windows on the rest of the façade
    door_x = np.where(q[:, 10] < 0.5, x0 + 2 + _ints(q[:, 11], 0, 2), x1 - 5 - _ints(q[:, 11], 0, 2))
    door_h = np.minimum(4 + _ints(q[:, 12], 0, 1), h - 2)
    lit = np.where(dusk[:, None] | (q[:, 13:14] < 0.3), [250, 215, 110], [150, 190, 225])
    lx = _XX - _c(x0) - 2
    win = (_rect(x0 + 2, x1 - 2, y0 + 2, y0 + 5) & ((lx % 5) < 3)  # 3x3 windows, 2 px apart
           & ~_rect(door_x - 1, door_x + 4, y0, ground_y) & ((lx // 5) * 5 + 3 <= _c(w - 4)))
    _paint(img, win, lit)
    _paint(img, _rect(door_x, door_x + 3, ground_y - door_h, ground_y), _pick(DOORS, q[:, 14], q[:, 15], 10))


def _building_shape(q, ground_y):
    """Left edge, width and height of each tower (capped so its roof is on row 1 or lower), from its parameters q."""
    x0, w = _extent(q, 8, 14)
    return x0, w, np.minimum(_ints(q[:, 1], 16, 27), ground_y - 1)


def _building_wall(q, dusk):
    return _pick(TOWER_WALLS, q[:, 3], q[:, 4]) * np.where(dusk, 0.75, 1.0)[:, None]


def _building(img, p, lit_bits, dusk, ground_y):
    q = p[:, BUILDING_Q]
    x0, w, h = _building_shape(q, ground_y)
    x1, y0 = x0 + w, ground_y - h
    wall = _building_wall(q, dusk)
    _paint(img, _rect(x0, x1, y0, ground_y), wall)
    _paint(img, _rect(x0 - 1, x1 + 1, y0, y0 + 1), wall * 0.65)  # flat roof with a parapet
    box = q[:, 5] < 0.4  # a rooftop plant room on some roofs
    _paint(img, _rect(x0 + 2, x0 + 2 + _ints(q[:, 6], 2, 4), y0 - 2, y0) & _c(box), wall * 0.8)
    # window grid: ww x wh windows with 1 px of wall between, lit from a per-image bit grid
    ww, wh = _ints(q[:, 7], 1, 2), np.full_like(w, 2)
    sx, sy = ww + 1, wh + 1
    lx, ly = _XX - _c(x0 + 1), _YY - _c(y0 + 2)
    col, row = np.floor(lx / _c(sx)), np.floor(ly / _c(sy))
    cols = (w - 2 + 1) // sx
    inside = (col >= 0) & (col < _c(cols)) & (row >= 0) & (_YY < _c(ground_y - 3))
    grid = inside & (lx - col * _c(sx) < _c(ww)) & (ly - row * _c(sy) < _c(wh))
    bits = lit_bits < np.where(dusk, 0.65, 0.3)[:, None]  # (N, 100): dusk lights more windows
    cell = (np.clip(row, 0, 9) * 10 + np.clip(col, 0, 9)).astype(np.int64)
    on = np.take_along_axis(bits, cell.reshape(len(p), -1), 1).reshape(cell.shape)
    dark = np.where(dusk[:, None], [35, 40, 60], [70, 95, 130]) + (q[:, 8:9] - 0.5) * 40
    _paint(img, grid & ~on, dark)
    _paint(img, grid & on, np.full((len(p), 3), [255, 220, 120]) - q[:, 9:10] * 30)
    door_x = (x0 + x1) // 2 - 1
    _paint(img, _rect(door_x, door_x + 3, ground_y - 3, ground_y), wall * 0.45)


def _scene(p):
    """Each image's label, time of day (dusk) and horizon row."""
    return (p[:, 0] < 0.5).astype(np.int64), p[:, 1] < 0.3, 23 + _ints(p[:, 2], 0, 4)


def make_images(indices: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 32, 32, 3) and labels int64 (N,) (0 building, 1 house) for `indices`."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) > CHUNK:
        parts = [make_images(indices[i:i + CHUNK], seed) for i in range(0, len(indices), CHUNK)]
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    p, lit_bits = _params(indices, seed)
    n = len(indices)
    labels, dusk, ground_y = _scene(p)
    img = np.empty((n, 3, SIZE, SIZE), np.float32)
    _sky_and_ground(img, p, dusk, ground_y)
    house = labels == HOUSE
    hx0, hw, *_ = _house_shape(p[:, HOUSE_Q])
    bx0, bw, _ = _building_shape(p[:, BUILDING_Q], ground_y)
    x0, w = np.where(house, hx0, bx0), np.where(house, hw, bw)
    _trees(img, p, dusk, ground_y, x0, x0 + w)
    # each class is painted on its own sub-batch: no mask work is spent on the other class
    for sel, paint in ((house, _house), (~house, _building)):
        if sel.any():
            sub = img[sel]
            paint(sub, p[sel], lit_bits[sel], dusk[sel], ground_y[sel])
            img[sel] = sub
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img.transpose(0, 2, 3, 1)), labels  # (N, H, W, 3)


SCENE_FACTORS = ("house", "dusk", "horizon", "left", "width", "height", "top", "trees", "clouds",
                 "wall_r", "wall_g", "wall_b", "ground_r", "ground_g", "ground_b")


def scene_factors(indices: np.ndarray, seed: int) -> np.ndarray:
    """What each image of make_images(indices, seed) shows, as float32 (N, len(SCENE_FACTORS)).

    The structure's left edge, width and height (body) in pixels and its top row (a house's ridge,
    a tower's parapet; a rooftop plant room is not counted), the horizon row, how many trees and
    clouds are placed (a tree placed beside a structure at the frame's edge can fall wholly outside
    it: the reader then cannot see it, for real and sampled images alike), and the wall and ground
    colours (levels before clipping and rounding); computed from the same parameters as the pixels.
    """
    p, _ = _params(np.asarray(indices, dtype=np.int64).reshape(-1), seed)
    labels, dusk, ground_y = _scene(p)
    house = labels == HOUSE
    hx0, hw, hh, rh = _house_shape(p[:, HOUSE_Q])
    bx0, bw, bh = _building_shape(p[:, BUILDING_Q], ground_y)
    height = np.where(house, hh, bh)
    top = ground_y - height - np.where(house, rh, 0)
    trees = (p[:, [18, 22]] < TREE_SHOWN).sum(1)  # parameter 3 of each tree's four (see _trees)
    clouds = (p[:, [8, 12]] < CLOUD_SHOWN).sum(1)  # parameter 3 of each cloud's four (see _sky_and_ground)
    wall = np.where(house[:, None], _house_wall(p[:, HOUSE_Q], dusk), _building_wall(p[:, BUILDING_Q], dusk))
    columns = [labels, dusk, ground_y, np.where(house, hx0, bx0), np.where(house, hw, bw), height, top, trees, clouds,
               *wall.T, *_ground_colour(p, dusk).T]
    return np.stack([np.asarray(c, np.float32) for c in columns], axis=1)
