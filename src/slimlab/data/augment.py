"""Batched tensor transforms (N, C, H, W) with per-sample randomness, on any device.

They run inside `ClassificationDataModule.on_after_batch_transfer`, after the batch reached
the device: `normalize` on every batch, then `augment` on training batches only. So the zero
fill of `RandomCrop` and `RandomShift` is 0 in normalized units, i.e. the channel mean.
Randomness comes from torch's global generator of the batch's device (seeded by `seed_everything`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slimlab.utils.errors import ConfigError, require


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_batch(x: torch.Tensor, name: str) -> None:
    require(
        x.dim() == 4,
        f"{name} got a tensor of shape {tuple(x.shape)}: give a batch of images (N, C, H, W)",
    )


def _crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Cut an (h, w) window from each image of `x`, at per-sample offsets `top`, `left` (N,)."""
    n, c, _, width = x.shape
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, w)
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, width))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


class Normalize(nn.Module):
    """Per-channel `(x - mean) / std`; uint8 input is first converted to float in [0, 1].

    Float input is taken as already scaled to [0, 1]. A single mean/std applies to every channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        try:
            mean_t = torch.tensor([float(v) for v in mean], dtype=torch.float32)
            std_t = torch.tensor([float(v) for v in std], dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"normalize.mean={mean!r}, normalize.std={std!r} are not lists of numbers: "
                "give one float per channel, e.g. mean: [0.1307], std: [0.3081]"
            ) from exc
        require(
            mean_t.numel() > 0 and mean_t.numel() == std_t.numel(),
            f"normalize.mean has {mean_t.numel()} values and normalize.std {std_t.numel()}: "
            "give one value per channel in each, the same number in both",
        )
        require(
            bool((std_t > 0).all()),
            f"normalize.std={std_t.tolist()} is out of range: give positive values",
        )
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "normalize")
        channels = self.mean.shape[1]
        require(
            channels in (1, x.shape[1]),
            f"normalize has {channels} mean/std values but the images have {x.shape[1]} "
            f"channels: give {x.shape[1]} values (or one for all channels)",
        )
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def extra_repr(self) -> str:
        mean = [round(v, 6) for v in self.mean.flatten().tolist()]
        std = [round(v, 6) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


class RandomCrop(nn.Module):
    """Zero-pad each side by `padding`, then cut a `size` x `size` window at a random offset."""

    def __init__(self, size: int, padding: int = 4) -> None:
        super().__init__()
        require(
            _is_int(size) and size > 0,
            f"augment.size={size} is out of range: give a positive integer",
        )
        require(
            _is_int(padding) and padding >= 0,
            f"augment.padding={padding} is out of range: give 0 or a positive integer",
        )
        self.size = size
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "augment")
        p = self.padding
        height, width = x.shape[-2] + 2 * p, x.shape[-1] + 2 * p
        require(
            self.size <= min(height, width),
            f"augment.size={self.size} is larger than the padded images ({height}x{width}): "
            f"give a size of at most {min(height, width)}",
        )
        if p:
            x = F.pad(x, (p, p, p, p))
        n = x.shape[0]
        top = torch.randint(0, height - self.size + 1, (n,), device=x.device)
        left = torch.randint(0, width - self.size + 1, (n,), device=x.device)
        return _crop(x, top, left, self.size, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, padding={self.padding}"


class RandomShift(nn.Module):
    """Translate each image by up to `max_shift` pixels along each axis, filling with zeros."""

    def __init__(self, max_shift: int) -> None:
        super().__init__()
        require(
            _is_int(max_shift) and max_shift >= 0,
            f"augment.max_shift={max_shift} is out of range: give 0 or a positive integer",
        )
        self.max_shift = max_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "augment")
        m = self.max_shift
        if m == 0:
            return x
        n, _, height, width = x.shape
        padded = F.pad(x, (m, m, m, m))
        top = torch.randint(0, 2 * m + 1, (n,), device=x.device)
        left = torch.randint(0, 2 * m + 1, (n,), device=x.device)
        return _crop(padded, top, left, height, width)

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}"


class RandomHorizontalFlip(nn.Module):
    """Mirror each image left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        require(
            isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0,
            f"augment.p={p} is out of range: give a probability in [0, 1]",
        )
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "augment")
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# -- mixing training batches: images and their labels ----------------------------------------
MIXES = ("cutmix", "mixup")


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, kind: str, num_classes: int, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image mixed with a partner from the same batch (a random pairing), and its label
    with the partner's: (mixed images, soft labels (N, num_classes) summing to 1).

    `cutmix` (Yun et al. 2019) pastes one box of the partner image, the same box for the whole
    batch; `mixup` (Zhang et al. 2018) blends the whole images, `lam * x + (1 - lam) * partner`.
    `lam ~ Beta(beta, beta)`, once per batch; each label keeps the share of the image that is
    its own (for cutmix the box's real area, after clipping at the border). Cross-entropy takes
    the soft labels as they are; a teacher that sees the mixed images says what they are in its
    own terms (KD on mixed images, as DeiT trains). Randomness: torch's global generator.
    """
    _check_batch(x, "data.mix")
    require(kind in MIXES, f"data.mix={kind!r} is not a mix: give null or one of {list(MIXES)}")
    n, _, height, width = x.shape
    lam = float(torch.distributions.Beta(beta, beta).sample())
    order = torch.randperm(n, device=x.device)
    partner = x[order]
    if kind == "mixup":
        mixed = lam * x + (1.0 - lam) * partner
    else:
        cut = math.sqrt(1.0 - lam)
        box_h, box_w = round(height * cut), round(width * cut)
        centre_y, centre_x = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, left = max(centre_y - box_h // 2, 0), max(centre_x - box_w // 2, 0)
        bottom = min(centre_y - box_h // 2 + box_h, height)
        right = min(centre_x - box_w // 2 + box_w, width)
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    own = F.one_hot(y, num_classes).to(x.dtype)
    return mixed, lam * own + (1.0 - lam) * own[order]


class Compose(nn.Sequential):
    """Apply `transforms` in order; a list of `_target_` entries in config builds one."""

    def __init__(self, transforms: Sequence[nn.Module]) -> None:
        for i, transform in enumerate(transforms):
            require(
                isinstance(transform, nn.Module),
                f"augment.transforms[{i}]={transform!r} is not a transform: give an nn.Module "
                "such as slimlab.data.augment.RandomCrop",
            )
        super().__init__(*transforms)
