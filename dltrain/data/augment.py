"""Data augmentation: random changes to training batches (`data.augment:` in a config; `dltrain augmentations`).

Each augmentation takes a batch already on its device and normalized, and returns a new one: vectorized over the
batch (no loop per image), its randomness drawn from the run's generator (backend.uniform_like; mixup's and cutmix's
mixing weight from the host generator), so a config trains the same twice and a resumed run equals an
uninterrupted one. Training batches only: validation, test, eval and predict never see them.

Images are (N, C, H, W). Pixels an augmentation uncovers (crop padding, translation) get the value a raw 0 pixel
has after normalization; erasing and cutout write `value` in normalized units (0: the mean), as torchvision's
RandomErasing after Normalize does. mixup and cutmix turn labels into class probabilities, which cross_entropy
takes as well as labels.
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, MaxLen, MinLen

from .. import backend
from ..errors import ConfigError, ShapeError
from ..registry import PositiveFloat, PositiveInt, UnitInterval, augmentations

np = backend.np
Pair = Annotated[list[Annotated[float, Gt(0)]], MinLen(2), MaxLen(2)]


class AugmentContext:
    """What an augmentation may need beside the batch: the number of classes, the fill value of uncovered pixels."""

    def __init__(self, classes: int | None, fill: float):
        self.classes, self.fill = classes, fill


def _uniform(x, *shape):
    return backend.uniform_like(x, shape)


def _images(x, name: str):
    if x.ndim != 4:
        raise ShapeError(f"data.augment: {name} works on images (N, C, H, W); this data's batches are {x.shape}")


def _shift(x, dy, dx, pad: int, fill: float, mode: str = "constant"):
    """Each image moved so that its (dy, dx) corner of the padded image is the new origin (0 <= d <= 2*pad)."""
    xp = backend.array_module(x)
    n, _, h, w = x.shape
    if mode == "constant":
        padded = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    else:
        padded = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode={"reflect": "reflect", "edge": "edge"}[mode])
    rows = dy[:, None] + xp.arange(h)[None]  # (N, H)
    cols = dx[:, None] + xp.arange(w)[None]  # (N, W)
    return padded[xp.arange(n)[:, None, None, None], xp.arange(x.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def _offsets(x, n: int, high: int):
    """n integers uniform in [0, high]."""
    xp = backend.array_module(x)
    return xp.minimum((_uniform(x, n) * (high + 1)).astype(xp.int64), high)


@augmentations.register("random_crop")
class RandomCrop:
    """Pad each image by `padding` pixels, then crop it back to its size at a random offset."""

    def __init__(self, padding: PositiveInt = 4, padding_mode: Literal["constant", "reflect", "edge"] = "constant"):
        self.padding, self.padding_mode = padding, padding_mode

    def __call__(self, x, y, context: AugmentContext):
        _images(x, "random_crop")
        n = len(x)
        dy, dx = _offsets(x, n, 2 * self.padding), _offsets(x, n, 2 * self.padding)
        return _shift(x, dy, dx, self.padding, context.fill, self.padding_mode), y


@augmentations.register("random_translate")
class RandomTranslate:
    """Move each image by up to `max_pixels` in each direction; what is uncovered is filled."""

    def __init__(self, max_pixels: PositiveInt = 2):
        self.max_pixels = max_pixels

    def __call__(self, x, y, context: AugmentContext):
        _images(x, "random_translate")
        n = len(x)
        dy, dx = _offsets(x, n, 2 * self.max_pixels), _offsets(x, n, 2 * self.max_pixels)
        return _shift(x, dy, dx, self.max_pixels, context.fill), y


class _Flip:
    axis = -1

    def __init__(self, p: UnitInterval = 0.5):
        self.p = p

    def __call__(self, x, y, context: AugmentContext):
        _images(x, self.registry_name)
        xp = backend.array_module(x)
        flip = _uniform(x, len(x)) < self.p
        return xp.where(flip[:, None, None, None], xp.flip(x, axis=self.axis), x), y


@augmentations.register("horizontal_flip")
class HorizontalFlip(_Flip):
    """Mirror each image left-right with probability p."""

    axis = -1


@augmentations.register("vertical_flip")
class VerticalFlip(_Flip):
    """Mirror each image upside down with probability p."""

    axis = -2


def _boxes(x, heights, widths):
    """Boolean masks (N, 1, H, W) of one rectangle per image, of the given sizes, at uniform random positions."""
    xp = backend.array_module(x)
    n, _, h, w = x.shape
    top = xp.minimum((_uniform(x, n) * (h - heights + 1)).astype(xp.int64), h - heights)
    left = xp.minimum((_uniform(x, n) * (w - widths + 1)).astype(xp.int64), w - widths)
    rows, cols = xp.arange(h)[None, :], xp.arange(w)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + heights)[:, None])  # (N, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + widths)[:, None])  # (N, W)
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


@augmentations.register("random_erasing")
class RandomErasing:
    """With probability p, set a random rectangle of each image to `value`: its area a `scale` fraction of the image
    (uniform), its aspect ratio from `ratio` (log-uniform), as Zhong et al. (one draw, clipped to the image)."""

    def __init__(self, p: UnitInterval = 0.5, scale: Pair = [0.02, 0.33], ratio: Pair = [0.3, 3.3],  # noqa: B006 (never mutated)
                 value: float = 0.0):
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ConfigError(f"random_erasing: scale and ratio are [low, high] ranges, got {scale} and {ratio}")
        if scale[1] > 1:
            raise ConfigError(f"random_erasing: scale is a fraction of the image's area, at most 1, got {scale[1]}")
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def __call__(self, x, y, context: AugmentContext):
        _images(x, "random_erasing")
        xp = backend.array_module(x)
        n, _, h, w = x.shape
        area = (self.scale[0] + _uniform(x, n) * (self.scale[1] - self.scale[0])) * h * w
        log_low, log_high = np.log(self.ratio[0]), np.log(self.ratio[1])
        aspect = xp.exp(log_low + _uniform(x, n) * (log_high - log_low))
        heights = xp.clip(xp.rint(xp.sqrt(area * aspect)).astype(xp.int64), 1, h)
        widths = xp.clip(xp.rint(xp.sqrt(area / aspect)).astype(xp.int64), 1, w)
        erase = _boxes(x, heights, widths) & (_uniform(x, n) < self.p)[:, None, None, None]
        return xp.where(erase, xp.asarray(self.value, dtype=x.dtype), x), y


@augmentations.register("cutout")
class Cutout:
    """With probability p, set a size x size square of each image, centred anywhere (clipped at the edges), to
    `value`, as DeVries and Taylor."""

    def __init__(self, size: PositiveInt = 8, p: UnitInterval = 1.0, value: float = 0.0):
        self.size, self.p, self.value = size, p, value

    def __call__(self, x, y, context: AugmentContext):
        _images(x, "cutout")
        xp = backend.array_module(x)
        n, _, h, w = x.shape
        cy = (_uniform(x, n) * h).astype(xp.int64)
        cx = (_uniform(x, n) * w).astype(xp.int64)
        rows, cols = xp.arange(h)[None, :], xp.arange(w)[None, :]
        half = self.size // 2
        inside = (((rows >= (cy - half)[:, None]) & (rows < (cy - half + self.size)[:, None]))[:, :, None]
                  & ((cols >= (cx - half)[:, None]) & (cols < (cx - half + self.size)[:, None]))[:, None, :])
        cut = inside[:, None] & (_uniform(x, n) < self.p)[:, None, None, None]
        return xp.where(cut, xp.asarray(self.value, dtype=x.dtype), x), y


def _soft_labels(y, classes: int, dtype):
    xp = backend.array_module(y)
    return y.astype(dtype) if y.ndim == 2 else xp.eye(classes, dtype=dtype)[y]


def _partners(x):
    """A random pairing of the batch (each sample mixed with another, or itself)."""
    xp = backend.array_module(x)
    return xp.argsort(_uniform(x, len(x)))


@augmentations.register("mixup")
class Mixup:
    """Each sample becomes lam * itself + (1 - lam) * a random partner, labels too (class probabilities);
    lam ~ Beta(alpha, alpha), one per batch, as Zhang et al."""

    needs_classes = True

    def __init__(self, alpha: PositiveFloat = 0.2):
        self.alpha = alpha

    def __call__(self, x, y, context: AugmentContext):
        lam = float(backend.host_rng().beta(self.alpha, self.alpha))
        partner = _partners(x)
        soft = _soft_labels(y, context.classes, x.dtype)
        return lam * x + (1 - lam) * x[partner], lam * soft + (1 - lam) * soft[partner]


@augmentations.register("cutmix")
class CutMix:
    """A random box of each image replaced by the same box of a random partner, the labels mixed by the box's
    share of the area; the box's area is (1 - lam) of the image, lam ~ Beta(alpha, alpha), as Yun et al."""

    needs_classes = True

    def __init__(self, alpha: PositiveFloat = 1.0):
        self.alpha = alpha

    def __call__(self, x, y, context: AugmentContext):
        _images(x, "cutmix")
        xp = backend.array_module(x)
        n, _, h, w = x.shape
        lam = float(backend.host_rng().beta(self.alpha, self.alpha))
        side = np.sqrt(1 - lam)
        bh, bw = max(int(round(h * side)), 0), max(int(round(w * side)), 0)
        partner = _partners(x)
        soft = _soft_labels(y, context.classes, x.dtype)
        if bh == 0 or bw == 0:
            return x, soft
        box = _boxes(x, xp.full(n, bh), xp.full(n, bw))
        share = bh * bw / (h * w)  # the label weight follows the box actually pasted
        return xp.where(box, x[partner], x), (1 - share) * soft + share * soft[partner]


@augmentations.register("gaussian_noise")
class GaussianNoise:
    """Add normal noise of standard deviation `std` (in normalized units) to every input value."""

    def __init__(self, std: Annotated[float, Ge(0), Le(10)] = 0.1):
        self.std = std

    def __call__(self, x, y, context: AugmentContext):
        xp = backend.array_module(x)
        u1, u2 = 1 - _uniform(x, *x.shape), _uniform(x, *x.shape)  # (0, 1] and [0, 1): Box-Muller
        noise = xp.sqrt(-2 * xp.log(u1)) * xp.cos(2 * np.pi * u2)
        return x + (self.std * noise).astype(x.dtype), y


class Augmenter:
    """The config's augmentations in order, for one run."""

    def __init__(self, specs: list[dict], classes: int | None, fill: float, task: str):
        self.steps = [augmentations.build(spec) for spec in specs]
        if any(getattr(a, "needs_classes", False) for a in self.steps) and task != "classification":
            names = [a.registry_name for a in self.steps if getattr(a, "needs_classes", False)]
            raise ConfigError(f"data.augment: {', '.join(names)} mix class labels; this run's loss is not "
                              f"cross_entropy (task {task})")
        self.context = AugmentContext(classes, fill)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x, y):
        for step in self.steps:
            x, y = step(x, y, self.context)
        return x, y

