"""Augmentation done on the GPU, on whole batches of uint8 images kept there.

A batch's random choices (`AugmentParams`) are drawn once and can be rendered at several sizes,
so a distillation teacher sees exactly the view the student sees ("consistent teaching",
Beyer et al. 2022), each at its own resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    theta: torch.Tensor  # B x 2 x 3 affine maps from output to source coordinates
    brightness: torch.Tensor  # B x 1 x 1 x 1 factors
    contrast: torch.Tensor
    saturation: torch.Tensor
    mix_partner: torch.Tensor | None  # B indices into the batch, or None without mixup
    mix_weight: torch.Tensor | None  # B x 1 x 1 x 1 share of the sample itself


def draw_params(
    batch: int,
    device: torch.device,
    min_scale: float,
    jitter: float,
    mixup_alpha: float,
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Random resized crop (area share min_scale..1, aspect 3/4..4/3), horizontal flip,
    brightness/contrast/saturation factors in 1 +- jitter, and optional mixup."""

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, device=device, generator=generator)

    area = uniform(min_scale, 1.0, batch)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3), batch)
    ratio = torch.exp(log_ratio)
    # Crop width and height as shares of the source side; a crop that would not fit is clamped.
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = uniform(-1.0, 1.0, batch) * (1.0 - width)
    centre_y = uniform(-1.0, 1.0, batch) * (1.0 - height)
    flip = torch.where(uniform(0.0, 1.0, batch) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    mix_partner = None
    mix_weight = None
    if mixup_alpha > 0:
        # Concentrations made on the device: no host-to-device copy, which would stall the
        # CPU until the GPU's queue drained, every step.
        concentration = torch.full((batch,), mixup_alpha, device=device)
        beta = torch.distributions.Beta(concentration, concentration)
        mix_weight = beta.sample().view(batch, 1, 1, 1)
        mix_partner = torch.randperm(batch, device=device, generator=generator)
    return AugmentParams(
        theta=theta,
        brightness=uniform(1 - jitter, 1 + jitter, batch, 1, 1, 1),
        contrast=uniform(1 - jitter, 1 + jitter, batch, 1, 1, 1),
        saturation=uniform(1 - jitter, 1 + jitter, batch, 1, 1, 1),
        mix_partner=mix_partner,
        mix_weight=mix_weight,
    )


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, as Pillow's convert("L") weighs the channels."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def render(images: torch.Tensor, params: AugmentParams, size: int) -> torch.Tensor:
    """uint8 B x 3 x H x W -> augmented float B x 3 x size x size, scaled as x / 127.5 - 1."""
    source = images.float() / 255.0
    grid = F.affine_grid(params.theta, [images.shape[0], 3, size, size], align_corners=False)
    x = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = x * params.brightness
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * params.contrast + mean
    grey = _grey(x)
    x = ((x - grey) * params.saturation + grey).clamp(0.0, 1.0)
    if params.mix_partner is not None and params.mix_weight is not None:
        x = params.mix_weight * x + (1 - params.mix_weight) * x[params.mix_partner]
    return x * 2.0 - 1.0


def evaluation_view(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The served preprocessing for square pack images: resize to size x size, x / 127.5 - 1."""
    x = images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x / 127.5 - 1.0
