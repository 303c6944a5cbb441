"""Batched SimCLR augmentations: shapes, determinism, and each operation on hand-made images."""

from __future__ import annotations

import pytest
import torch

from hnm.contrastive.augment import (
    AugmentParams,
    AugmentSettings,
    SimCLRAugment,
    apply_params,
    sample_params,
    to_float,
)

SETTINGS = AugmentSettings()


def identity_params(batch: int, height: int, width: int) -> AugmentParams:
    """Full-image crop, and every optional operation off."""
    off = torch.zeros(batch, dtype=torch.bool)
    crop = torch.tensor([[0.0, 0.0, float(width), float(height)]], dtype=torch.float64)
    return AugmentParams(
        crop=crop.repeat(batch, 1),
        flip=off.clone(),
        jitter=off.clone(),
        factors=torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(batch, 1),
        order=torch.arange(4).repeat(batch, 1),
        grayscale=off.clone(),
        blur=off.clone(),
        sigma=torch.ones(batch),
    )


def test_shapes_range_and_normalisation() -> None:
    images = torch.randint(0, 256, (6, 20, 24, 3), dtype=torch.uint8)
    augment = SimCLRAugment(16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    views = augment.views(images, torch.Generator().manual_seed(1))
    assert views.shape == (6, 3, 16, 16) and views.dtype == torch.float32
    assert views.min() >= 0.0 and views.max() <= 1.0
    normalised = augment(images, torch.Generator().manual_seed(1))
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, (views - mean) / std)


def test_deterministic_with_a_seed_and_different_across_seeds() -> None:
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    augment = SimCLRAugment(16, mean=(0.5,) * 3, std=(0.5,) * 3)
    first = augment(images, torch.Generator().manual_seed(7))
    again = augment(images, torch.Generator().manual_seed(7))
    other = augment(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    # Two views from one generator differ (the SimCLR pair).
    generator = torch.Generator().manual_seed(7)
    assert not torch.allclose(augment(images, generator), augment(images, generator))


def test_identity_params_reproduce_the_image() -> None:
    images = torch.randint(0, 256, (2, 12, 12, 3), dtype=torch.uint8)
    x = to_float(images)
    out = apply_params(x, identity_params(2, 12, 12), 12, SETTINGS)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_horizontal_flip() -> None:
    images = torch.randint(0, 256, (3, 10, 10, 3), dtype=torch.uint8)
    x = to_float(images)
    params = identity_params(3, 10, 10)
    params.flip[:] = torch.tensor([True, False, True])
    out = apply_params(x, params, 10, SETTINGS)
    torch.testing.assert_close(out[0], x[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], x[2].flip(-1), atol=1e-5, rtol=0)


def test_crop_takes_the_chosen_box() -> None:
    # A box as large as the output is copied pixel for pixel (no resampling blur).
    images = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    x = to_float(images)
    params = identity_params(1, 16, 16)
    params.crop[0] = torch.tensor([8.0, 4.0, 8.0, 8.0], dtype=torch.float64)
    out = apply_params(x, params, 8, SETTINGS)
    torch.testing.assert_close(out[0], x[0, :, 4:12, 8:16], atol=1e-5, rtol=0)


def test_grayscale_uses_luma_weights() -> None:
    image = torch.tensor([[[[200, 100, 50], [0, 255, 10]]]], dtype=torch.uint8)  # (1, 1, 2, 3)
    params = identity_params(1, 1, 2)
    params.grayscale[0] = True
    params.crop[0] = torch.tensor([0.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    out = apply_params(to_float(image), params, 2, SETTINGS)  # 1 x 2 image resampled to 2 x 2
    expected = torch.tensor([0.299 * 200 + 0.587 * 100 + 0.114 * 50, 0.587 * 255 + 0.114 * 10])
    expected = expected / 255
    for channel in range(3):
        torch.testing.assert_close(out[0, channel, 0], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[0, channel, 1], expected, atol=1e-5, rtol=0)


def test_colour_jitter_operations_by_hand() -> None:
    red = torch.zeros(4, 4, 4, 3, dtype=torch.uint8)
    red[..., 0] = 200
    params = identity_params(4, 4, 4)
    params.jitter[:] = True
    params.factors = torch.tensor(
        [
            [0.5, 1.0, 1.0, 0.0],  # brightness halves
            [1.0, 1.0, 0.0, 0.0],  # saturation 0: grey at the luma value
            [1.0, 1.0, 1.0, 1 / 3],  # hue +120 degrees: red -> green
            [1.0, 0.0, 1.0, 0.0],  # contrast 0: the mean grey
        ]
    )
    out = apply_params(to_float(red), params, 4, SETTINGS)
    value = 200 / 255
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([value / 2, 0, 0]), atol=1e-5, rtol=0)
    grey = 0.299 * value
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([grey] * 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2, :, 0, 0], torch.tensor([0, value, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[3, :, 0, 0], torch.tensor([grey] * 3), atol=1e-5, rtol=0)


def test_blur_keeps_flat_images_and_smooths_edges() -> None:
    images = torch.full((2, 3, 20, 20), 0.4)
    images[1, :, :, 10:] = 1.0
    params = identity_params(2, 20, 20)
    params.blur[:] = True
    params.sigma[:] = 2.0
    out = apply_params(images.clone(), params, 20, SETTINGS)
    torch.testing.assert_close(out[0], images[0], atol=1e-5, rtol=0)
    edge = out[1, 0, 10]
    assert 0.4 < edge[9].item() < edge[10].item() < 1.0  # the step got smoothed
    assert torch.allclose(edge[:3], torch.tensor(0.4), atol=1e-3)


def test_parameter_frequencies_and_crop_bounds() -> None:
    params = sample_params(4000, 30, 40, torch.Generator().manual_seed(0), SETTINGS)
    assert abs(params.flip.float().mean().item() - 0.5) < 0.03
    assert abs(params.jitter.float().mean().item() - 0.8) < 0.03
    assert abs(params.grayscale.float().mean().item() - 0.2) < 0.03
    assert abs(params.blur.float().mean().item() - 0.5) < 0.03
    x0, y0, w, h = params.crop.unbind(dim=1)
    assert torch.all(x0 >= 0) and torch.all(y0 >= 0)
    assert torch.all(x0 + w <= 40 + 1e-9) and torch.all(y0 + h <= 30 + 1e-9)
    area = w * h / (30 * 40)
    assert area.min() >= 0.08 - 1e-9 and area.max() <= 1 + 1e-9
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 1e-9 and ratio.max() <= 4 / 3 + 1e-9
    assert params.factors[:, :3].min() >= 0.2 and params.factors[:, :3].max() <= 1.8
    assert params.factors[:, 3].abs().max() <= 0.2
    assert params.sigma.min() >= 0.1 and params.sigma.max() <= 2.0
    assert torch.all(params.order.sort(dim=1).values == torch.arange(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    augment = SimCLRAugment(32, mean=(0.5,) * 3, std=(0.5,) * 3)
    on_cpu = augment(images, torch.Generator().manual_seed(3))
    on_gpu = augment(images.cuda(), torch.Generator().manual_seed(3))
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-3, rtol=0)
