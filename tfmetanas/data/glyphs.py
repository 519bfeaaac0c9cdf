"""`glyphs`: procedurally drawn handwritten-looking characters, the embedded default.

A stand-in for Omniglot that needs no download, so the quickstart and the
tests run on a fresh machine. Everything is generated deterministically from
`data.glyphs.seed` with numpy (no files):

- a *class* (character) is 1-4 pen strokes; a stroke is a chain of 1-2 cubic
  Bezier segments, later strokes often start on an earlier one (as in
  Omniglot, where strokes touch);
- an *instance* (one drawer's rendering) jitters every control point, applies a
  small random affine map (rotation, shear, anisotropic scale, shift) and a
  random pen width;
- rendering is anti-aliased and vectorised over all images: points sampled
  densely along the curves are splatted bilinearly onto a 2x supersampled grid
  with weights proportional to arc length, blurred with a per-image Gaussian
  pen (separable, as batched matrix products), mapped through 1 - exp(-gain *
  ink) so stroke cores saturate, and box-downsampled to the output size.

Images are strokes = 1.0 on background 0.0 (the same polarity as preprocessed
Omniglot). Default set: 3000 classes x 20 instances at 28x28, split by class
into train/val/test = the first 2000 / next 400 / last 600 classes. Config
keys (`data.glyphs.*`, all optional): num_classes (3000), instances (20),
seed (0), train_classes (2000), val_classes (400); test gets the rest.
Generating the default set takes about a second; arrays are memoised per
process and cached on disk like Omniglot.
"""

import functools

import numpy as np

from tfmetanas import errors
from tfmetanas.data import base, preprocess

DEFAULTS = {
    "num_classes": 3000,
    "instances": 20,
    "seed": 0,
    "train_classes": 2000,
    "val_classes": 400,
}
_VERSION = 1  # Bump when the drawing changes, so stale caches are not reused.
_MAX_STROKES = 4
_MAX_SEGMENTS = 2  # cubic segments per stroke
_POINTS = 32  # samples per cubic segment
# Gaussian pen sigmas in pixels at 28x28 (scaled with the image size).
_PEN_SIGMAS = np.linspace(0.45, 0.8, 8).astype(np.float32)


def _class_skeletons(rng, num_classes):
    """Control points of every class: [C, S, G, 4, 2] plus a stroke/segment mask."""
    shape = (num_classes, _MAX_STROKES, _MAX_SEGMENTS)
    num_strokes = rng.choice([1, 2, 3, 4], size=num_classes, p=[0.2, 0.35, 0.3, 0.15])
    num_segments = rng.choice([1, 2], size=shape[:2], p=[0.55, 0.45])
    stroke_on = np.arange(_MAX_STROKES)[None] < num_strokes[:, None]
    mask = stroke_on[..., None] & (np.arange(_MAX_SEGMENTS)[None, None] < num_segments[..., None])

    # Anchor points (segment ends) lie in the character box [-1, 1]^2; inner
    # control points are offsets from the anchors, which gives smooth,
    # pen-like curves instead of random zig-zags.
    anchors = rng.uniform(-0.85, 0.85, size=shape[:2] + (_MAX_SEGMENTS + 1, 2))
    # Strokes after the first start, with probability 0.6, at a point on the
    # previous stroke (its start, end or joint), so parts of a glyph connect.
    for s in range(1, _MAX_STROKES):
        attach = rng.uniform(size=num_classes) < 0.6
        which = rng.integers(0, _MAX_SEGMENTS + 1, size=num_classes)
        prev = anchors[np.arange(num_classes), s - 1, which]
        anchors[attach, s, 0] = prev[attach]
    # Short strokes look like dots/noise; push the segment ends apart.
    delta = anchors[:, :, 1:] - anchors[:, :, :-1]
    length = np.linalg.norm(delta, axis=-1, keepdims=True)
    short = length < 0.6
    anchors[:, :, 1:] = np.where(
        short, anchors[:, :, :-1] + delta / np.maximum(length, 1e-3) * 0.6, anchors[:, :, 1:]
    )
    anchors = np.clip(anchors, -1.0, 1.0)
    start, end = anchors[:, :, :-1], anchors[:, :, 1:]
    direction = end - start
    bend = rng.normal(0.0, 0.35, size=shape + (2, 2))
    # Control points: 1/3 and 2/3 along the chord plus a perpendicular-ish bend.
    c1 = start + direction / 3 + bend[..., 0, :] * np.linalg.norm(direction, axis=-1, keepdims=True)
    c2 = (
        start
        + 2 * direction / 3
        + bend[..., 1, :] * np.linalg.norm(direction, axis=-1, keepdims=True)
    )
    controls = np.stack([start, c1, c2, end], axis=-2)  # [C, S, G, 4, 2]
    # Centre each character and scale its bounding box (of the drawn curve,
    # not of the control points) to fill [-1, 1]: glyphs of one stroke are as
    # large as glyphs of four, as in a real alphabet.
    t = np.linspace(0.0, 1.0, 9)
    basis = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], -1)
    curve = np.matmul(basis, controls)  # [C, S, G, 9, 2]
    big = np.where(mask[..., None, None], curve, np.nan).reshape(num_classes, -1, 2)
    lo, hi = np.nanmin(big, axis=1), np.nanmax(big, axis=1)
    centre = (lo + hi) / 2
    extent = np.maximum((hi - lo).max(axis=1), 0.5) / 2  # keep dots from blowing up
    controls = (controls - centre[:, None, None, None]) / extent[:, None, None, None, None]
    return controls.astype(np.float32), mask


def _render_sized(controls, mask, pen_level, gain, size, sigmas):
    """Renders instances.

    Args:
      controls: [B, S, G, 4, 2] control points in pixel units (x, y).
      mask: [B, S, G] bool, which segments exist.
      pen_level: [B] int index into `sigmas` (the pen width).
      gain: [B] ink gain.
      size: output height and width.
      sigmas: pen Gaussian sigmas in pixels.

    Returns:
      float32 [B, size, size] in [0, 1].
    """
    b = controls.shape[0]
    t = np.linspace(0.0, 1.0, _POINTS, dtype=np.float32)
    basis = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], -1)
    dbasis = np.stack(
        [
            -3 * (1 - t) ** 2,
            3 * (1 - t) ** 2 - 6 * (1 - t) * t,
            6 * (1 - t) * t - 3 * t**2,
            3 * t**2,
        ],
        -1,
    )
    # One [P, 4] x [4, everything] GEMM instead of many tiny batched products.
    flat = np.moveaxis(controls, -2, 0).reshape(4, -1)
    points = np.moveaxis((basis @ flat).reshape((_POINTS,) + controls.shape[:3] + (2,)), 0, 3)
    velocity = np.moveaxis((dbasis @ flat).reshape((_POINTS,) + controls.shape[:3] + (2,)), 0, 3)
    speed = np.sqrt(velocity[..., 0] ** 2 + velocity[..., 1] ** 2)  # [B, S, G, P]
    # Ink proportional to arc length per sample gives uniform ink per unit
    # length, so long and short strokes are equally dark. Samples of absent
    # segments (about half of them) are dropped before splatting.
    present = np.broadcast_to(mask[..., None], speed.shape)
    ink = speed[present] / _POINTS
    x, y = points[..., 0][present], points[..., 1][present]
    image_of = np.broadcast_to(np.arange(b)[:, None, None, None], speed.shape)[present]

    # Bilinear splat of all images with a single bincount (no Python loop
    # over images or points).
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xs = np.concatenate([x0, x0 + 1, x0, x0 + 1])
    ys = np.concatenate([y0, y0, y0 + 1, y0 + 1])
    weights = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    weights *= np.tile(ink, 4)
    # Points pushed off the canvas by the affine jitter are clamped to the
    # border with zero weight rather than filtered (cheaper).
    inside = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
    weights *= inside
    idx = (
        np.tile(image_of * (size * size), 4)
        + np.clip(ys, 0, size - 1) * size
        + np.clip(xs, 0, size - 1)
    )
    canvas = np.bincount(idx, weights=weights, minlength=b * size * size)
    canvas = canvas.astype(np.float32).reshape(b, size, size)

    # Gaussian pen as a separable blur K @ canvas @ K^T; pen widths are
    # quantised to a few levels so each level is two large matrix products.
    coords = np.arange(size, dtype=np.float32)
    diff = coords[:, None] - coords[None, :]
    blurred = np.empty_like(canvas)
    for level, sigma in enumerate(sigmas):
        sel = np.nonzero(pen_level == level)[0]
        if not len(sel):
            continue
        kernel = np.exp(-0.5 * (diff / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
        # Cut the tails: float32 denormals would make the GEMMs 10x slower.
        kernel = np.where(np.abs(diff) <= 4 * sigma, kernel, 0.0).astype(np.float32)
        # 2-D reshapes turn the per-image products into one large GEMM each.
        rows = (canvas[sel].reshape(-1, size) @ kernel).reshape(-1, size, size)  # along x
        cols = np.ascontiguousarray(np.swapaxes(rows, 1, 2)).reshape(-1, size) @ kernel
        blurred[sel] = np.swapaxes(cols.reshape(-1, size, size), 1, 2)  # along y
    return (1.0 - np.exp(-gain[:, None, None] * blurred)).astype(np.float32)


def generate_glyphs(num_classes=3000, instances=20, seed=0, image_size=28, batch=256):
    """Generates the glyphs data set.

    Args:
      num_classes: number of characters.
      instances: renderings ("drawers") per character.
      seed: generation seed; the same arguments always give the same arrays.
      image_size: output height and width.
      batch: images rendered per vectorised call (bounds memory; the images do
        not depend on it). 256 was faster than 4096 at every size tried, with a
        fraction of the memory: the default set (60,000 images) at 28 px in
        0.94 against 1.02-1.10 s, peak 78 against 227 MB; at 56 px 1.7 against
        3.7-3.9 s, 224 against 553 MB (`tracemalloc`).

    Returns:
      uint8 [num_classes, instances, image_size, image_size, 1], strokes bright.
    """
    rng = np.random.default_rng([_VERSION, int(seed)])
    controls, mask = _class_skeletons(rng, num_classes)
    n = num_classes * instances
    # Instance variation, drawn for all images at once so the result does not
    # depend on `batch`.
    jitter = rng.normal(0.0, 0.06, size=(n,) + controls.shape[1:]).astype(np.float32)
    angle = rng.normal(0.0, 0.12, size=n)
    shear = rng.normal(0.0, 0.12, size=n)
    scale = rng.uniform(0.85, 1.05, size=(n, 2)) * rng.uniform(0.9, 1.1, size=(n, 1))
    shift = rng.normal(0.0, 0.05, size=(n, 2))
    pen_level = rng.integers(0, len(_PEN_SIGMAS), size=n)
    gain = rng.uniform(3.0, 4.5, size=n).astype(np.float32)

    cos, sin = np.cos(angle), np.sin(angle)
    affine = np.stack([np.stack([cos, -sin + shear], -1), np.stack([sin, cos], -1)], -2)
    affine = (affine * scale[:, None, :]).astype(np.float32)  # [n, 2, 2]
    # The character box [-1, 1] maps to about 76% of the image, like Omniglot.
    half = 0.38 * image_size
    px = image_size / 28.0  # pen and gain are defined at 28x28

    # Each batch goes to uint8 as soon as it is rendered: a float32 array of
    # every image (and the copies of it that clipping and rounding make) would
    # take 16 bytes per pixel, 1.6 GB at 42x42.
    out = np.zeros((n, image_size, image_size), np.uint8)
    class_of = np.repeat(np.arange(num_classes), instances)
    sigmas = _PEN_SIGMAS * px
    for start in range(0, n, batch):
        sl = slice(start, min(start + batch, n))
        ctrl = controls[class_of[sl]] + jitter[sl]
        ctrl = np.einsum("bij,bsgkj->bsgki", affine[sl], ctrl) + shift[sl][:, None, None, None, :]
        ctrl = (ctrl * half + image_size / 2.0 - 0.5).astype(np.float32)
        # Gain grows with the pen width so that thin and thick pens both
        # saturate in the stroke core.
        g = gain[sl] * sigmas[pen_level[sl]]
        rendered = _render_sized(ctrl, mask[class_of[sl]], pen_level[sl], g, image_size, sigmas)
        out[sl] = preprocess.to_uint8(np.clip(rendered, 0.0, 1.0))
    return out.reshape(num_classes, instances, image_size, image_size, 1)


@functools.lru_cache(maxsize=4)
def _cached_glyphs(num_classes, instances, seed, image_size):
    name = f"glyphs-v{_VERSION}-{num_classes}x{instances}-s{seed}-{image_size}px.npz"
    cached = base.load_npz_cache(name)
    if cached is not None and cached["images"].shape == (
        num_classes,
        instances,
        image_size,
        image_size,
        1,
    ):
        return cached["images"]
    images = generate_glyphs(num_classes, instances, seed, image_size)
    base.save_npz_cache(name, images=images)
    return images


def split_classes(num_classes, train_classes, val_classes):
    """Class index ranges of the splits: first train, next val, rest test."""
    test_classes = num_classes - train_classes - val_classes
    if min(train_classes, val_classes, test_classes) < 1:
        raise errors.ConfigError(
            f"glyphs: num_classes={num_classes} cannot be split into train_classes="
            f"{train_classes}, val_classes={val_classes} and at least one test class; "
            "raise data.glyphs.num_classes or lower the split sizes."
        )
    return {
        "train": (0, train_classes),
        "val": (train_classes, train_classes + val_classes),
        "test": (train_classes + val_classes, num_classes),
    }


def build(data_config, split, seed):
    """Builds the glyphs `TaskSource` for one split (see the module docstring for keys)."""
    base.check_split(split)
    sub = base.cfg_get(data_config, "glyphs", None)
    opts = {k: int(base.cfg_get(sub, k, v)) for k, v in DEFAULTS.items()}
    image_size = int(base.cfg_get(data_config, "image_size", 28))
    ranges = split_classes(opts["num_classes"], opts["train_classes"], opts["val_classes"])
    images = _cached_glyphs(opts["num_classes"], opts["instances"], opts["seed"], image_size)
    lo, hi = ranges[split]
    return base.ImageTaskSource(
        images[lo:hi],
        split=split,
        seed=seed,
        ways=int(base.cfg_get(data_config, "ways", 5)),
        shots=int(base.cfg_get(data_config, "shots", 1)),
        queries=int(base.cfg_get(data_config, "queries", 15)),
        preprocess_spec=preprocess.make_spec(image_size, channels=1, invert=False),
        rotations=bool(base.cfg_get(data_config, "rotations", False)) and split == "train",
        class_names=[f"glyph{c:04d}" for c in range(lo, hi)],
        name="glyphs",
    )
