"""Training-time augmentation of log-mel batches [batch, 1, n_mels, frames] in dB, and mixup.

All randomness comes from torch's global RNG, so a seeded run augments the same way every time.
No soft cross-entropy is defined here:
torch.nn.functional.cross_entropy takes probability targets and applies label_smoothing to them
(target * (1 - eps) + eps / classes), which is what mixup's soft targets need.
"""

import torch
import torch.nn.functional as F


class SpectrogramAugment(torch.nn.Module):
    """Random time crop, random gain and SpecAugment masks, in training mode only.

    Applied in that order, each with its own random draw per example:
    - crop_frames: a crop of this many frames at a random offset (clips no longer are kept whole);
    - shift_frames: a circular roll along time by up to this many frames either way;
    - gain_db: a gain uniform in [-gain_db, gain_db] added to the dB values. Features are
      power_to_db with a top_db floor relative to the clip's own peak, so this equals a waveform gain;
    - freq_masks / time_masks bands, each of a width uniform in [0, *_mask_width] at a uniform
      position (SpecAugment, Park et al., "SpecAugment: A Simple Data Augmentation Method for
      Automatic Speech Recognition", Interspeech 2019). The masked values become the example's mean:
      0 dB would be the loudest possible level here, not silence or "no information".
    Zero or None switches an augmentation off; in eval mode the input is returned as it is.
    """

    def __init__(
        self,
        crop_frames: int | None = None,
        gain_db: float = 0.0,
        freq_masks: int = 0,
        freq_mask_width: int = 0,
        time_masks: int = 0,
        time_mask_width: int = 0,
        shift_frames: int = 0,
    ):
        super().__init__()
        self.shift_frames = shift_frames
        self.crop_frames = crop_frames or None
        self.gain_db = gain_db
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_width = time_masks, time_mask_width

    def extra_repr(self) -> str:
        return (
            f"crop_frames={self.crop_frames}, gain_db={self.gain_db}, freq_masks={self.freq_masks}x"
            f"{self.freq_mask_width}, time_masks={self.time_masks}x{self.time_mask_width}, "
            f"shift_frames={self.shift_frames}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.crop_frames is not None and x.shape[-1] > self.crop_frames:
            x = random_crop(x, self.crop_frames)
        if self.shift_frames > 0:
            x = random_roll(x, self.shift_frames)
        if self.gain_db > 0:
            gain = (torch.rand(len(x), 1, 1, 1, device=x.device) * 2 - 1) * self.gain_db
            x = x + gain.to(x.dtype)
        freq_band = band_masks(len(x), x.shape[-2], self.freq_masks, self.freq_mask_width, x.device)
        time_band = band_masks(len(x), x.shape[-1], self.time_masks, self.time_mask_width, x.device)
        if freq_band is not None or time_band is not None:
            masked = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
            if freq_band is not None:
                masked = masked | freq_band[:, None, :, None]
            if time_band is not None:
                masked = masked | time_band[:, None, None, :]
            mean = x.float().mean(dim=(1, 2, 3), keepdim=True).to(x.dtype)
            x = torch.where(masked, mean, x)
        return x


def random_crop(x: torch.Tensor, frames: int) -> torch.Tensor:
    """`frames` consecutive frames of each example, from a random offset of its own."""
    offsets = (torch.rand(len(x), device=x.device) * (x.shape[-1] - frames + 1)).long()
    index = offsets[:, None] + torch.arange(frames, device=x.device)  # [batch, frames]
    return x.gather(-1, index[:, None, None, :].expand(*x.shape[:-1], frames))


def random_roll(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each example rolled circularly along time by its own offset, uniform in [-max_shift, max_shift]."""
    frames = x.shape[-1]
    shifts = (torch.rand(len(x), device=x.device) * (2 * max_shift + 1)).long() - max_shift
    index = (torch.arange(frames, device=x.device) - shifts[:, None]) % frames  # [batch, frames]
    return x.gather(-1, index[:, None, None, :].expand(x.shape))


def band_masks(batch: int, size: int, count: int, max_width: int, device) -> torch.Tensor | None:
    """[batch, size] booleans: the union of `count` bands per example, each of a width uniform in
    [0, max_width] (capped at size) at a uniform start; None when masking is off."""
    if count <= 0 or max_width <= 0:
        return None
    widths = (torch.rand(batch, count, 1, device=device) * (min(max_width, size) + 1)).long()
    starts = (torch.rand(batch, count, 1, device=device) * (size - widths + 1)).long()
    position = torch.arange(size, device=device)
    return ((position >= starts) & (position < starts + widths)).any(dim=1)


def mixup(x: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with another of the batch (Zhang et al., "mixup: Beyond Empirical Risk
    Minimization", ICLR 2018): lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha, alpha), one per batch.

    y: label indices [batch], or multi-hot targets [batch, n_classes] of multi-label data, which
    are mixed the same way (each tag's target becomes lam, 1 - lam, 1 or 0).
    Returns the mixed batch and float32 soft targets [batch, n_classes] (single-label rows sum to
    1), for torch.nn.functional.cross_entropy or binary_cross_entropy_with_logits. alpha <= 0: x
    itself and the one-hot (or multi-hot) targets.
    """
    targets = F.one_hot(y, n_classes).float() if y.dim() == 1 else y.float()
    if alpha <= 0:
        return x, targets
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    perm = torch.randperm(len(x)).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]
