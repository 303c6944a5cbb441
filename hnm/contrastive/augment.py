"""SimCLR augmentations on whole batches, in plain torch, on whatever device the batch lives on.

Per-image PIL augmentation on the CPU cannot feed a GPU training step (about 13,600 img/s for
ResNet-18 on an H200, docs/performance.md), so the recipe (random resized crop, horizontal flip, colour
jitter 0.8/0.8/0.8/0.2 with p = 0.8, grayscale p = 0.2, Gaussian blur p = 0.5) runs here as batched
tensor ops: crop, resize and flip are one affine `grid_sample`, the jitter and blur run on the
subsets of the batch that drew them. Every random parameter is drawn on the CPU from a
torch.Generator, a fixed number of draws per batch, so a seed gives the same views on any device and
a resumed run replays them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hnm.encoders.inputs import to_channel_order

# ITU-R 601 luma weights, as in PIL's and torchvision's grayscale conversion.
LUMA = (0.299, 0.587, 0.114)
CROP_ATTEMPTS = 10
# (images subset, per-image values) -> transformed subset
Operation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AugmentSettings:
    """The SimCLR recipe (Chen et al. 2020, colour strength s = 1: jitter 0.8/0.8/0.8/0.2)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1  # kernel side = 10% of the output side, made odd


@dataclass
class AugmentParams:
    """One batch's random draws (CPU tensors), separate from applying them so tests can set them."""

    crop: torch.Tensor  # (B, 4) x0, y0, width, height in input pixels (continuous)
    flip: torch.Tensor  # (B,) bool
    jitter: torch.Tensor  # (B,) bool
    factors: torch.Tensor  # (B, 4) brightness, contrast, saturation factors, hue shift
    order: torch.Tensor  # (B, 4) permutation of the four jitter operations
    grayscale: torch.Tensor  # (B,) bool
    blur: torch.Tensor  # (B,) bool
    sigma: torch.Tensor  # (B,)


def sample_params(
    batch: int, height: int, width: int, generator: torch.Generator, settings: AugmentSettings
) -> AugmentParams:
    """Draw every parameter for a batch; the number of draws does not depend on their values."""

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    crop = _crop_boxes(batch, height, width, generator, settings)
    flip = torch.rand(batch, generator=generator) < settings.flip_p
    jitter = torch.rand(batch, generator=generator) < settings.jitter_p
    factors = torch.stack(
        [
            uniform(max(0.0, 1 - settings.brightness), 1 + settings.brightness, batch),
            uniform(max(0.0, 1 - settings.contrast), 1 + settings.contrast, batch),
            uniform(max(0.0, 1 - settings.saturation), 1 + settings.saturation, batch),
            uniform(-settings.hue, settings.hue, batch),
        ],
        dim=1,
    ).float()
    order = torch.rand(batch, 4, generator=generator).argsort(dim=1)
    grayscale = torch.rand(batch, generator=generator) < settings.grayscale_p
    blur = torch.rand(batch, generator=generator) < settings.blur_p
    sigma = uniform(*settings.blur_sigma, batch).float()
    return AugmentParams(crop, flip, jitter, factors, order, grayscale, blur, sigma)


def _crop_boxes(
    batch: int, height: int, width: int, generator: torch.Generator, settings: AugmentSettings
) -> torch.Tensor:
    """RandomResizedCrop's box: area fraction in `scale`, log-uniform aspect ratio in `ratio`.

    Like torchvision, up to ten tries per image, falling back to the largest centred box with the
    aspect ratio clamped into `ratio`; the ten tries are drawn for every image at once.
    """
    area = height * width
    target = area * (
        settings.scale[0]
        + (settings.scale[1] - settings.scale[0])
        * torch.rand(batch, CROP_ATTEMPTS, generator=generator, dtype=torch.float64)
    )
    log_low, log_high = math.log(settings.ratio[0]), math.log(settings.ratio[1])
    aspect = torch.exp(
        log_low
        + (log_high - log_low)
        * torch.rand(batch, CROP_ATTEMPTS, generator=generator, dtype=torch.float64)
    )
    widths = torch.sqrt(target * aspect)
    heights = torch.sqrt(target / aspect)
    fits = (widths <= width) & (heights <= height)
    first = torch.where(fits.any(dim=1), fits.float().argmax(dim=1), -1)
    offsets = torch.rand(batch, 2, generator=generator, dtype=torch.float64)

    image_ratio = width / height
    if image_ratio < settings.ratio[0]:
        fallback = (width, width / settings.ratio[0])
    elif image_ratio > settings.ratio[1]:
        fallback = (height * settings.ratio[1], height)
    else:
        fallback = (width, height)
    rows = torch.arange(batch)
    chosen = first.clamp(min=0)
    w = torch.where(
        first >= 0,
        widths[rows, chosen],
        torch.full((batch,), float(fallback[0]), dtype=torch.float64),
    )
    h = torch.where(
        first >= 0,
        heights[rows, chosen],
        torch.full((batch,), float(fallback[1]), dtype=torch.float64),
    )
    x0 = torch.where(first >= 0, offsets[:, 0] * (width - w), (width - w) / 2)
    y0 = torch.where(first >= 0, offsets[:, 1] * (height - h), (height - h) / 2)
    return torch.stack([x0, y0, w, h], dim=1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def apply_params(
    images: torch.Tensor, params: AugmentParams, size: int, settings: AugmentSettings
) -> torch.Tensor:
    """Augment float (B, 3, H, W) images in [0, 1] -> (B, 3, size, size) in [0, 1]."""
    device = images.device
    out = _crop_resize_flip(images, params.crop, params.flip, size)

    def on_subset(mask: torch.Tensor, function: Operation, values: torch.Tensor) -> None:
        # index_select/index_copy_: several times faster than `out[i] = f(out[i])` on the CPU.
        chosen = torch.nonzero(mask).flatten()
        if len(chosen):
            index = chosen.to(device)
            result = function(out.index_select(0, index), values[chosen].to(device))
            out.index_copy_(0, index, result)

    for stage in range(4):
        for operation, function in enumerate((_brightness, _contrast, _saturation, _hue)):
            on_subset(
                params.jitter & (params.order[:, stage] == operation),
                function,
                params.factors[:, operation],
            )
    on_subset(params.grayscale, lambda x, _: _gray(x).expand(-1, 3, -1, -1), params.sigma)
    kernel = _kernel_size(size, settings)
    on_subset(params.blur, lambda x, sigma: _gaussian_blur(x, sigma, kernel), params.sigma)
    return out


def _crop_resize_flip(
    images: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: int
) -> torch.Tensor:
    """One bilinear resample per image through an affine grid (normalised coords, pixel edges)."""
    batch, _, height, width = images.shape
    x0, y0, w, h = crop.unbind(dim=1)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    grid = F.affine_grid(
        theta.to(device=images.device, dtype=images.dtype),
        [batch, 3, size, size],
        align_corners=False,
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp_(0.0, 1.0)


def _brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def _saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, _gray(images), factor)


def _hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue in HSV space by `shift` turns (in [-0.5, 0.5])."""
    hue, saturation, value = _rgb_to_hsv(images)
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(hue, saturation, value)


def _rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = images.unbind(dim=1)
    maxc = images.amax(dim=1)
    minc = images.amin(dim=1)
    chroma = maxc - minc
    grey = chroma == 0
    saturation = chroma / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    divisor = torch.where(grey, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.where(grey, torch.zeros_like(hue), hue), saturation, maxc


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # Branch-free form: channel n (R=5, G=3, B=1) = V - V S clamp(min(k, 4 - k), 0, 1),
    # k = (n + 6 H) mod 6.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + hue * 6.0, 6.0)
        channels.append(value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=1)


def _kernel_size(size: int, settings: AugmentSettings) -> int:
    kernel = max(3, int(settings.blur_kernel_fraction * size))
    return kernel if kernel % 2 else kernel + 1


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable blur with one sigma per image: a grouped conv over the (image, channel) pairs."""
    count, channels, height, width = images.shape
    radius = kernel // 2
    offsets = torch.arange(kernel, device=images.device, dtype=images.dtype) - radius
    weights = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None].to(images.dtype) ** 2))
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = images.reshape(1, count * channels, height, width)
    # Reflect padding needs the pad to be smaller than the side; tiny images fall back to
    # replicate, which is what a blur at a border would assume anyway.
    mode = "reflect" if radius < min(height, width) else "replicate"
    flat = F.pad(flat, (radius, radius, 0, 0), mode=mode)
    flat = F.conv2d(flat, weights.view(-1, 1, 1, kernel), groups=count * channels)
    flat = F.pad(flat, (0, 0, radius, radius), mode=mode)
    flat = F.conv2d(flat, weights.view(-1, 1, kernel, 1), groups=count * channels)
    return flat.view(count, channels, height, width).clamp_(0.0, 1.0)


class SimCLRAugment:
    """uint8 patches -> normalised augmented views, on the patches' device."""

    def __init__(
        self,
        size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        settings: AugmentSettings | None = None,
        channel_order: str = "rgb",
    ) -> None:
        self.size = int(size)
        self.channel_order = channel_order
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.settings = settings or AugmentSettings()

    def views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmented view per image, in [0, 1] (before normalisation)."""
        batch, height, width, _ = images.shape
        params = sample_params(batch, height, width, generator, self.settings)
        return apply_params(to_float(images), params, self.size, self.settings)

    def normalise(self, views: torch.Tensor) -> torch.Tensor:
        """RGB views in [0, 1] -> the encoder's input: its channel order, then its mean/std.
        The augmentations themselves (grayscale, hue) always work on true RGB."""
        mean = self.mean.to(views.device)
        std = self.std.to(views.device)
        return (to_channel_order(views, self.channel_order, 1) - mean) / std

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.normalise(self.views(images, generator))
