"""Augmentation: shapes, train/eval behaviour, reproducibility, mask widths, gain range and mixup."""

import pytest
import torch
import torch.nn.functional as F

from genrenet.augment import SpectrogramAugment, band_masks, mixup

ALL_ON = dict(crop_frames=40, gain_db=6.0, freq_masks=2, freq_mask_width=8, time_masks=2, time_mask_width=10)


def batch(n=16, mels=32, frames=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, mels, frames, generator=generator) * 10 - 40  # dB-like values


def test_shapes():
    x = batch()
    assert SpectrogramAugment(**ALL_ON).train()(x).shape == (16, 1, 32, 40)
    assert SpectrogramAugment(**{**ALL_ON, "crop_frames": None}).train()(x).shape == x.shape


def test_eval_mode_is_identity():
    x = batch()
    assert SpectrogramAugment(**ALL_ON).eval()(x) is x


@pytest.mark.parametrize(
    "off",
    [
        {},
        {"crop_frames": 0},
        {"crop_frames": 64},
        {"crop_frames": 100},
        {"gain_db": 0.0},
        {"freq_masks": 3, "freq_mask_width": 0},
        {"freq_masks": 0, "freq_mask_width": 5},
        {"time_masks": 3, "time_mask_width": 0},
        {"time_masks": 0, "time_mask_width": 5},
    ],
)
def test_switched_off_is_identity_in_train_mode(off):
    x = batch()
    torch.testing.assert_close(SpectrogramAugment(**off).train()(x), x, rtol=0, atol=0)


def test_seed_makes_it_reproducible():
    x, augment = batch(), SpectrogramAugment(**ALL_ON).train()
    torch.manual_seed(1)
    first = augment(x)
    torch.manual_seed(1)
    again = augment(x)
    torch.manual_seed(2)
    other = augment(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_crop_takes_consecutive_frames_at_varied_offsets():
    x = batch(n=32)
    torch.manual_seed(0)
    cropped = SpectrogramAugment(crop_frames=20).train()(x)
    offsets = []
    for original, crop in zip(x, cropped):
        matches = [o for o in range(64 - 20 + 1) if torch.equal(original[..., o : o + 20], crop)]
        assert len(matches) == 1
        offsets += matches
    assert len(set(offsets)) > 5


@pytest.mark.parametrize("masks", [1, 2])
def test_frequency_masks_replace_bands_with_the_example_mean(masks):
    x = batch(n=64)
    torch.manual_seed(0)
    out = SpectrogramAugment(freq_masks=masks, freq_mask_width=6).train()(x)
    mean = x.mean(dim=(1, 2, 3))
    changed_rows = (out != x).any(dim=-1).squeeze(1)  # [batch, mels]
    for i in range(len(x)):
        rows = changed_rows[i]
        assert rows.sum() <= masks * 6
        torch.testing.assert_close(out[i, 0, rows], mean[i].expand(int(rows.sum()), 64))
        if masks == 1 and rows.any():  # one mask: one contiguous band
            where = rows.nonzero().flatten()
            assert where[-1] - where[0] + 1 == len(where)
    assert changed_rows.sum(dim=1).max() >= 4  # wide bands do occur


def test_time_masks_replace_bands_with_the_example_mean():
    x = batch(n=64)
    torch.manual_seed(0)
    out = SpectrogramAugment(time_masks=1, time_mask_width=12).train()(x)
    changed_frames = (out != x).any(dim=-2).squeeze(1)  # [batch, frames]
    assert changed_frames.sum(dim=1).max() <= 12
    assert changed_frames.sum(dim=1).max() >= 8
    for i in changed_frames.any(dim=1).nonzero().flatten():
        assert torch.allclose(out[i, 0][:, changed_frames[i]], x[i].mean())


def test_band_masks_width_range():
    torch.manual_seed(0)
    widths = band_masks(5000, 40, 1, 5, "cpu").sum(dim=1)
    assert set(widths.tolist()) == {0, 1, 2, 3, 4, 5}  # uniform in [0, max_width], as in SpecAugment
    assert band_masks(10, 3, 1, 50, "cpu").sum(dim=1).max() <= 3  # capped at the axis size


def test_gain_shifts_each_example_by_one_bounded_constant():
    x = batch(n=64)
    torch.manual_seed(0)
    shift = SpectrogramAugment(gain_db=3.0).train()(x) - x
    per_example = shift.mean(dim=(1, 2, 3))
    torch.testing.assert_close(shift, per_example[:, None, None, None].expand_as(shift))
    assert per_example.abs().max() <= 3.0
    assert per_example.abs().max() > 2.0 and per_example.std() > 0.5


def test_keeps_float16():
    x = batch().half()
    assert SpectrogramAugment(**ALL_ON).train()(x).dtype == torch.float16


def test_mixup_is_a_convex_combination_with_matching_targets():
    x = batch(n=8)
    y = torch.arange(8)  # one class per example, so the targets are the mixing weights
    torch.manual_seed(0)
    mixed, targets = mixup(x, y, n_classes=8, alpha=0.4)
    assert mixed.shape == x.shape and targets.shape == (8, 8)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert (targets >= 0).all()
    torch.testing.assert_close(mixed.flatten(1), targets @ x.flatten(1))
    assert not torch.equal(mixed, x)


def test_mixup_soft_targets_with_repeated_labels():
    y = torch.tensor([0, 1, 1, 2, 0, 3])
    _, targets = mixup(torch.randn(6, 1, 4, 4), y, n_classes=5, alpha=1.0)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    assert (targets[:, 4] == 0).all()


def test_mixup_off_and_reproducible():
    x, y = batch(n=8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    same, one_hot = mixup(x, y, 3, alpha=0.0)
    assert same is x and torch.equal(one_hot, F.one_hot(y, 3).float())

    def seeded(seed):
        torch.manual_seed(seed)
        return mixup(x, y, 3, 0.2)

    first, again, other = seeded(5), seeded(5), seeded(6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_torch_cross_entropy_handles_soft_targets_with_label_smoothing():
    # Why augment.py has no soft_cross_entropy: the built-in smooths probability targets too.
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.softmax(torch.randn(6, 4), dim=1)
    smoothed = targets * (1 - 0.1) + 0.1 / 4
    expected = -(smoothed * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(F.cross_entropy(logits, targets, label_smoothing=0.1), expected)


def test_time_shift_rolls_each_example_within_the_bound():
    x = batch(n=32)
    torch.manual_seed(0)
    shifted = SpectrogramAugment(shift_frames=5).train()(x)
    assert shifted.shape == x.shape
    seen = set()
    for original, rolled in zip(x, shifted):
        matches = [s for s in range(-5, 6) if torch.equal(torch.roll(original, s, dims=-1), rolled)]
        assert matches  # a circular roll of the whole example: nothing lost, nothing invented
        seen.add(matches[0])
    assert len(seen) > 3  # offsets vary across the batch


def test_time_shift_off_and_in_eval_mode():
    x = batch()
    torch.testing.assert_close(SpectrogramAugment(shift_frames=0).train()(x), x, rtol=0, atol=0)
    assert SpectrogramAugment(shift_frames=5).eval()(x) is x
