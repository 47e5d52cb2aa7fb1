"""Batched tensor transforms: shapes, per-sample randomness, the math, and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimlab.data.augment import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomShift,
    mix_batch,
)
from slimlab.utils.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images(n: int = 16, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    """A batch of n identical images whose pixels are all distinct and non-zero."""
    one = torch.arange(1, c * h * w + 1, dtype=torch.float32).view(1, c, h, w)
    return one.repeat(n, 1, 1, 1)


def windows(x: torch.Tensor, pad: int, h: int, w: int) -> list[torch.Tensor]:
    """Every (h, w) window of one image zero-padded by `pad` on each side."""
    padded = F.pad(x, (pad, pad, pad, pad))
    return [
        padded[:, i : i + h, j : j + w]
        for i in range(padded.shape[1] - h + 1)
        for j in range(padded.shape[2] - w + 1)
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "transform",
    [
        Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        RandomCrop(8, padding=4),
        RandomShift(2),
        RandomHorizontalFlip(),
        Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()]),
    ],
    ids=["normalize", "crop", "shift", "flip", "compose"],
)
@pytest.mark.parametrize("n", [1, 5])
def test_shapes_are_preserved_on_any_batch_size(transform, n, device) -> None:
    x = torch.rand(n, 3, 8, 8, device=device)
    out = transform(x)
    assert out.shape == x.shape
    assert out.device == x.device
    assert out.dtype == torch.float32


def test_random_crop_cuts_a_real_window_at_a_different_offset_per_sample() -> None:
    torch.manual_seed(0)
    x = images(n=64)
    out = RandomCrop(6, padding=2)(x)
    assert out.shape == (64, 3, 6, 6)
    candidates = windows(x[0], pad=2, h=6, w=6)
    offsets = set()
    for sample in out:
        matches = [k for k, window in enumerate(candidates) if torch.equal(window, sample)]
        assert len(matches) == 1, "each crop must be exactly one window of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 10, "samples of one batch must get their own offsets"


def test_random_crop_without_padding_and_full_size_is_identity() -> None:
    x = images(n=4)
    assert torch.equal(RandomCrop(8, padding=0)(x), x)


def test_random_crop_too_large_for_the_images_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"augment.size=20 is larger"):
        RandomCrop(20, padding=2)(images())


def test_random_shift_translates_with_zero_fill_per_sample() -> None:
    torch.manual_seed(0)
    x = images(n=64)
    out = RandomShift(2)(x)
    candidates = windows(x[0], pad=2, h=8, w=8)  # all 25 shifts of the image
    shifts = set()
    for sample in out:
        matches = [k for k, window in enumerate(candidates) if torch.equal(window, sample)]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10
    assert torch.equal(RandomShift(0)(x), x)


def test_flip_mirrors_left_right() -> None:
    x = torch.rand(4, 3, 5, 7)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)


def test_flip_decides_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 1, 4, 4)
    out = RandomHorizontalFlip(p=0.5)(x)
    flipped = torch.tensor([torch.equal(o, s.flip(-1)) for o, s in zip(out, x)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 60 < int(flipped.sum()) < 140


def test_normalize_converts_uint8_to_unit_range_then_standardizes() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(2, 3, 1, 1)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    out = Normalize(mean, std)(x)
    assert out.dtype == torch.float32
    for c in range(3):
        expected = (torch.tensor([0.0, 0.2, 1.0]) - mean[c]) / std[c]
        torch.testing.assert_close(out[0, c, 0], expected)


def test_normalize_takes_float_input_as_already_scaled_and_one_value_for_all_channels() -> None:
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(Normalize([0.5], [0.5])(x), (x - 0.5) / 0.5)


def test_normalize_with_wrong_channel_count_says_how_many() -> None:
    with pytest.raises(ConfigError, match="images have 1 channels: give 1 values"):
        Normalize([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])(torch.rand(2, 1, 4, 4))


def test_compose_applies_in_order() -> None:
    x = torch.rand(3, 1, 4, 4)
    out = Compose([Normalize([0.5], [0.5]), RandomHorizontalFlip(p=1.0)])(x)
    torch.testing.assert_close(out, ((x - 0.5) / 0.5).flip(-1))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RandomCrop(32, padding=-1), r"augment.padding=-1 is out of range: give 0 or a"),
        (lambda: RandomCrop(0), r"augment.size=0 is out of range: give a positive integer"),
        (lambda: RandomCrop(2.5), r"augment.size=2.5 is out of range"),
        (lambda: RandomShift(-2), r"augment.max_shift=-2 is out of range"),
        (lambda: RandomHorizontalFlip(p=1.5), r"augment.p=1.5 is out of range: give a prob"),
        (lambda: Normalize([0.5], [0.0]), r"normalize.std=\[0.0\] is out of range"),
        (lambda: Normalize([0.5, 0.5], [0.5]), r"normalize.mean has 2 values and normalize.std 1"),
        (lambda: Normalize(["a"], [0.5]), r"not lists of numbers"),
        (lambda: Compose([RandomShift(1), "flip"]), r"augment.transforms\[1\]='flip' is not a"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_key(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_transforms_reject_a_batch_without_four_dims() -> None:
    with pytest.raises(ConfigError, match=r"give a batch of images \(N, C, H, W\)"):
        RandomCrop(4)(torch.rand(3, 8, 8))


# -- mix_batch: images mixed in pairs, labels mixed with them ---------------------------------
def test_cutmix_pastes_one_box_of_a_partner_and_labels_by_area() -> None:
    torch.manual_seed(0)
    n = 16
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()
    y = torch.arange(n) % 10
    mixed, soft = mix_batch(x, y, "cutmix", num_classes=10)
    assert torch.equal(x[:, 0, 0, 0], torch.arange(16.0)), "x itself is left as it was"
    masks = [mixed[i, 0] != i for i in range(n)]  # where image i holds another image's pixels
    pasted = [m for m in masks if m.any()]  # images paired with themselves show no box
    assert len(pasted) >= n // 2
    box = pasted[0]
    assert all(torch.equal(m, box) for m in pasted), "one box, the same for the whole batch"
    rows, cols = box.nonzero().unbind(1)
    assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all(), "a rectangle"
    partners = [int(mixed[i, 0][box][0]) for i in range(n)]
    assert sorted(partners) == list(range(n)), "each image pasted into exactly one other"
    share = float(box.float().mean())  # the box's area, as a share of the image
    assert soft.shape == (n, 10)
    torch.testing.assert_close(soft.sum(1), torch.ones(n))
    for i in range(n):
        expected = torch.zeros(10)
        expected[y[i]] += 1 - share
        expected[y[partners[i]]] += share
        torch.testing.assert_close(soft[i], expected)


def test_mixup_blends_each_image_and_its_label_with_one_partner() -> None:
    torch.manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    mixed, soft = mix_batch(x, y, "mixup", num_classes=10)
    flat, mix_flat = x.flatten(1), mixed.flatten(1)
    for i in range(32):  # mixed[i] = lam x[i] + (1 - lam) x[j] for one j and one lam per batch
        best = (float("inf"), 0, 1.0)
        for j in range(32):
            d = flat[i] - flat[j]
            lam = float(((mix_flat[i] - flat[j]) @ d) / (d @ d)) if i != j else 1.0
            error = float((mix_flat[i] - (lam * flat[i] + (1 - lam) * flat[j])).abs().max())
            best = min(best, (error, j, lam))
        error, j, lam = best
        assert error < 1e-5
        expected = lam * F.one_hot(y[i], 10).float() + (1 - lam) * F.one_hot(y[j], 10).float()
        torch.testing.assert_close(soft[i], expected, atol=1e-4, rtol=0)


def test_mix_batch_refuses_unknown_kinds_and_non_image_batches() -> None:
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"data.mix='blend' is not a mix: give null or one of"):
        mix_batch(torch.zeros(2, 1, 8, 8), y, "blend", 10)
    with pytest.raises(ConfigError, match="give a batch of images"):
        mix_batch(torch.zeros(2, 64), y, "mixup", 10)
