"""Batch augmentations of normalised images, per example, drawn from a torch.Generator.

- `crop_flip`: random crop after 4-pixel zero padding and a horizontal flip (the CIFAR
  recipe of the papers).
- `randaugment`: a RandAugment-style strong augmentation suited to grayscale images (the
  semi-supervised baselines of Meta Pseudo Labels, Table 1, and UDA's strong view). Each
  image gets `ops` operations drawn uniformly from translate x / y, rotate, shear x / y,
  contrast, brightness and identity, each at a magnitude drawn uniformly up to the
  maximum below (UDA's random-magnitude variant), then a cutout square. Colour-changing
  operations that assume RGB (colour, solarise, posterise, equalise) are left out. Geometric
  operations fill with each image's darkest value, the background of MNIST-like images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("none", "crop_flip", "randaugment")
MAX_SHIFT = 0.15  # of the image side (4 pixels of 28)
MAX_ROTATION = 30.0  # degrees
MAX_SHEAR = 0.3
MAX_CONTRAST = 0.5  # factor in [1 - m, 1 + m]
MAX_BRIGHTNESS = 0.5  # offset in units of the (normalised) pixel standard deviation
CUTOUT = 0.25  # side of the square, as a fraction of the image side
OPS = ("identity", "shift_x", "shift_y", "rotate", "shear_x", "shear_y", "contrast", "brightness")


def augment(x: torch.Tensor, kind: str, g: torch.Generator, ops: int = 2) -> torch.Tensor:
    """x augmented by `kind` (one of KINDS); the draws come from g (on the CPU)."""
    if kind == "none":
        return x
    if x.dim() != 4:
        raise ValueError(f"augmentation {kind!r} needs images [N, C, H, W], got {tuple(x.shape)}")
    if kind == "crop_flip":
        return crop_flip(x, g)
    if kind == "randaugment":
        return rand_augment(x, g, ops)
    raise ValueError(f"unknown augmentation {kind!r} (known: {', '.join(KINDS)})")


def crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel zero padding) and horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = (torch.randint(0, 9, (n,), generator=g) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h)).to(x.device)
    cols = (dx[:, None] + torch.arange(w)).to(x.device)
    out = padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(x.shape[1], device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def rand_augment(x: torch.Tensor, g: torch.Generator, ops: int) -> torch.Tensor:
    """`ops` random operations per image, then cutout (see the module docstring)."""
    n = len(x)
    background = x.amin((1, 2, 3), keepdim=True)
    affine = torch.eye(3).repeat(n, 1, 1)
    scale, offset = torch.ones(n), torch.zeros(n)
    for _ in range(ops):
        op = torch.randint(len(OPS), (n,), generator=g)
        m = torch.rand(n, generator=g) * torch.where(torch.rand(n, generator=g) < 0.5, -1, 1)
        step = torch.eye(3).repeat(n, 1, 1)
        angle = m * math.radians(MAX_ROTATION)
        rotate = op == OPS.index("rotate")
        step[rotate, 0, 0], step[rotate, 0, 1] = angle[rotate].cos(), -angle[rotate].sin()
        step[rotate, 1, 0], step[rotate, 1, 1] = angle[rotate].sin(), angle[rotate].cos()
        for name, (row, col), size in (
            ("shift_x", (0, 2), 2 * MAX_SHIFT),  # affine_grid's coordinates span [-1, 1]
            ("shift_y", (1, 2), 2 * MAX_SHIFT),
            ("shear_x", (0, 1), MAX_SHEAR),
            ("shear_y", (1, 0), MAX_SHEAR),
        ):
            chosen = op == OPS.index(name)
            step[chosen, row, col] = m[chosen] * size
        affine = step @ affine
        contrast = op == OPS.index("contrast")
        scale = torch.where(contrast, scale * (1 + MAX_CONTRAST * m), scale)
        brightness = op == OPS.index("brightness")
        offset = torch.where(brightness, offset + MAX_BRIGHTNESS * m, offset)

    grid = F.affine_grid(affine[:, :2].to(x), list(x.shape), align_corners=False)
    warped = F.grid_sample(x - background, grid, align_corners=False) + background
    mean = warped.mean((1, 2, 3), keepdim=True)
    out = (warped - mean) * scale.to(x)[:, None, None, None] + mean
    out = out + offset.to(x)[:, None, None, None]
    return cutout(out, background, g)


def cutout(x: torch.Tensor, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A square of side CUTOUT * side at a random centre set to `fill`, per image."""
    n, _, h, w = x.shape
    side = max(1, round(CUTOUT * min(h, w)))
    cy, cx = torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)
    rows = (torch.arange(h)[None] - cy[:, None]).abs() <= side // 2
    cols = (torch.arange(w)[None] - cx[:, None]).abs() <= side // 2
    hole = (rows[:, :, None] & cols[:, None, :])[:, None].to(x.device)
    return torch.where(hole, fill.expand_as(x), x)
