"""Scores stage: clip-level log-probabilities from a model, aggregated to one decision per track.

Single-label models (one class per track, softmax): track decisions average the clips'
log-probabilities (a product of clip probabilities, in the log domain), then renormalize, so a
track's probabilities sum to one. Multi-label models (any number of tags per track, one sigmoid
per tag): a clip's scores are each tag's log-probability on its own (logsigmoid), and a track's
tag probabilities are the mean of its clips' (as musicnn averages its taggram). A model trained
on crops shorter than a clip scores each clip the same way over windows of the crop's length.
"""

import collections
import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from genrenet.store import TrackFeatures


def window_starts(frames: int, window: int) -> list[int]:
    """Start frames of windows of `window` frames every half window, the last one ending at the clip's end."""
    if frames <= window:
        return [0]
    hop = max(1, window // 2)
    starts = list(range(0, frames - window + 1, hop))
    return starts if starts[-1] == frames - window else starts + [frames - window]


@torch.no_grad()
def clip_log_probs(
    model: torch.nn.Module,
    features: list[torch.Tensor],
    device: torch.device,
    batch_size: int = 64,
    window: int | None = None,
    multi_label: bool = False,
) -> list[torch.Tensor]:
    """Per track, log-probabilities of every clip: a list of [clips, classes] tensors on the CPU.

    window: score each clip as the renormalized mean log-probability of its windows of this many
    frames (see window_starts); None scores whole clips. multi_label: each tag's own
    log-probability (logsigmoid), see the module's docstring."""
    model.eval()
    return per_file(
        features, batch_size, lambda batch: clip_outputs(model, batch, device, window, multi_label=multi_label)[0]
    )


def log_scores(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Logits [n, classes] -> log-probabilities: over the classes (log_softmax), or with
    multi_label each tag's own (logsigmoid)."""
    logits = logits.float()
    return torch.nn.functional.logsigmoid(logits) if multi_label else torch.log_softmax(logits, dim=1)


def clip_outputs(
    model: torch.nn.Module,
    batch: torch.Tensor,
    device,
    window: int | None = None,
    embedding: bool = False,
    multi_label: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities [n, classes] of a batch of clips [n, 1, ...] and, with embedding=True, their
    embeddings [n, dim] (None when the model has none), both on the CPU. Clips scored whole give
    both from one forward pass; a model scored over windows gets its embeddings from a pass over
    whole clips (the CNNs pool over time)."""
    whole = window is None or batch.shape[-1] <= window
    output = model(batch.to(device)) if whole or embedding else {}
    if whole:
        log_probs = log_scores(output["logits"], multi_label).cpu()
    else:
        log_probs = _window_log_probs(model, batch, device, window, multi_label)
    vectors = output.get("embedding") if embedding else None
    return log_probs, None if vectors is None else vectors.float().cpu()


def _window_log_probs(
    model: torch.nn.Module, batch: torch.Tensor, device, window: int, multi_label: bool
) -> torch.Tensor:
    starts = window_starts(batch.shape[-1], window)
    windows = torch.cat([batch[..., s : s + window] for s in starts])  # [windows * clips, 1, mels, window]
    log_probs = log_scores(model(windows.to(device))["logits"], multi_label).cpu()
    if multi_label:  # a tag's probability in the clip: the mean of its windows'
        return log_probs.view(len(starts), len(batch), -1).exp().mean(dim=0).log()
    return torch.log_softmax(log_probs.view(len(starts), len(batch), -1).mean(dim=0), dim=1)


@torch.no_grad()
def per_file(features, batch_size: int, run) -> list[torch.Tensor]:
    """run(batch [n, 1, ...] of clips) -> [n, ...] over every file's clips, several files sharing a
    batch, then split back into one tensor per file. Files are read one at a time (a split's
    features may be far larger than memory). The outputs go into one tensor made at the first
    batch: kept as a small tensor per batch, they sat between each batch's large freed buffers in
    the allocator's heap, and scoring 180 stored tracks peaked 325 MiB above scoring 45."""
    counts = _clip_counts(features)
    total = sum(counts)
    joined, done = torch.empty(0), 0
    for batch in _clip_batches(features, batch_size):
        output = run(batch.float().unsqueeze(1))
        if done == 0:
            joined = output.new_empty(total, *output.shape[1:])
        joined[done : done + len(output)] = output  # more clips than counted: a shape error here
        done += len(output)
    if done != total:  # fewer: the rest of joined would be whatever memory it was made in
        raise RuntimeError(f"{done} clips were scored where the files' counts add up to {total}")
    return list(torch.split(joined, counts)) if counts else []


class ClipStream:
    """Clips that arrive a piece at a time, from one file or many, scored batch_size at a time.

    scored(items) takes (key, value) pairs: a tensor value is a piece of a file's clips [n, ...],
    given back as (key, run's outputs for those n clips); any other value (a file's end, an error)
    is given back as it is, once every piece that came before it has been given back. Pieces of
    several files share batches, and only the clips not yet run are held (less than a batch and a
    piece), so a file of any length is scored in bounded memory. run(batch [n, 1, ...]) returns a
    tuple of [n, ...] tensors, or of None where it has no such output."""

    def __init__(self, batch_size: int, run):
        self.batch_size, self.run = batch_size, run
        self.queue = collections.deque()  # (key, clip count or None, value) in arrival order
        self.waiting: list[torch.Tensor] = []  # pieces not run yet
        self.ready: list | None = None  # outputs of clips run and not given back yet

    @torch.no_grad()
    def scored(self, items: Iterable[tuple]) -> Iterator[tuple]:
        for key, value in items:
            if not isinstance(value, torch.Tensor):
                self.queue.append((key, None, value))
            elif len(value):  # only its clip count is queued: the piece itself goes once it is run
                self.queue.append((key, len(value), None))
                self.waiting.append(value)
                if sum(len(piece) for piece in self.waiting) >= self.batch_size:
                    self._run(everything=False)
            yield from self._given_back()
        if self.waiting:
            self._run(everything=True)
        yield from self._given_back()

    def _run(self, everything: bool) -> None:
        flat = torch.cat(self.waiting) if len(self.waiting) > 1 else self.waiting[0]
        whole = len(flat) if everything else len(flat) // self.batch_size * self.batch_size
        # the rest is copied out, so that no view keeps all of flat alive until the next batch
        self.waiting = [flat[whole:].clone()] if whole < len(flat) else []
        outputs = [self.run(batch.float().unsqueeze(1)) for batch in flat[:whole].split(self.batch_size)]
        del flat
        if self.ready is not None:
            outputs.insert(0, self.ready)
        self.ready = [None if parts[0] is None else torch.cat(parts) for parts in zip(*outputs)]

    def _given_back(self) -> Iterator[tuple]:
        while self.queue:
            key, count, value = self.queue[0]
            if count is not None:
                if self.ready is None or len(self.ready[0]) < count:
                    return
                value = tuple(None if part is None else part[:count] for part in self.ready)
                self.ready = [None if part is None else part[count:] for part in self.ready]
            self.queue.popleft()
            yield key, value


def _clip_counts(features) -> list[int]:
    """Each file's number of clips; a stored split's come from its index, without reading it."""
    return features.counts.tolist() if isinstance(features, TrackFeatures) else [len(f) for f in features]


def _clip_batches(features, batch_size: int):
    """Batches of batch_size consecutive clips over all files (the last one shorter)."""
    waiting, size = [], 0
    for file_features in features:
        waiting.append(file_features)
        size += len(file_features)
        if size >= batch_size:
            flat = torch.cat(waiting)
            whole = len(flat) // batch_size * batch_size
            yield from flat[:whole].split(batch_size)
            waiting, size = [flat[whole:]], len(flat) - whole
    if size:
        yield torch.cat(waiting)


def track_log_probs(clip_scores: list[torch.Tensor]) -> torch.Tensor:
    """[tracks, classes]: the mean of each track's clip log-probabilities, renormalized."""
    means = torch.stack([scores.mean(dim=0) for scores in clip_scores])
    return torch.log_softmax(means, dim=1)


def track_probs(clip_scores: list[torch.Tensor], multi_label: bool = False) -> torch.Tensor:
    """[tracks, classes] probabilities of each track: single-label, its renormalized mean clip
    log-probability (they sum to one); multi-label, the mean of its clips' tag probabilities."""
    if multi_label:
        return torch.stack([scores.exp().mean(dim=0) for scores in clip_scores])
    return track_log_probs(clip_scores).exp()


def per_clip(track_values: list, clip_scores: list[torch.Tensor]) -> list:
    """Each track's value (its label index, say) repeated once for each of its clips."""
    return [value for scores, value in zip(clip_scores, track_values) for _ in range(len(scores))]


def track_predictions(
    model: torch.nn.Module, features: list[torch.Tensor], device, window: int | None = None
) -> list[int]:
    """The class index each track is decided as."""
    return track_log_probs(clip_log_probs(model, features, device, window=window)).argmax(dim=1).tolist()


def split_scores(
    model: torch.nn.Module, features: list[torch.Tensor], targets: list[int], device, window: int | None = None
) -> dict:
    """Loss and accuracy at clip and track level of one split, as validation reports them."""
    return score_clips(clip_log_probs(model, features, device, window=window), targets)


def score_clips(clip_scores: list[torch.Tensor], targets: list[int]) -> dict:
    """Loss and accuracy at clip and track level, from each track's clip log-probabilities."""
    clip_targets = torch.tensor(per_clip(targets, clip_scores), dtype=torch.long)
    all_clips = torch.cat(clip_scores)
    track_decision = track_log_probs(clip_scores).argmax(dim=1)
    return {
        "loss": torch.nn.functional.nll_loss(all_clips, clip_targets).item(),
        "clip_acc": (all_clips.argmax(dim=1) == clip_targets).float().mean().item(),
        "track_acc": (track_decision == torch.tensor(targets)).float().mean().item(),
    }


# --- multi-label (tag) scores ------------------------------------------------------------------

DEFAULT_THRESHOLD = 0.5  # a tag's threshold where the validation split cannot inform one


def tag_aucs(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """ROC-AUC and PR-AUC (average precision) of each tag and their macro means, from sklearn.

    y_true, probs: [tracks, tags]. A tag's ROC-AUC needs tracks with and without it, its PR-AUC
    tracks with it: where these are missing its value is None, and the macro means (NaN when no
    tag has one) leave it out rather than count it as 0."""
    from sklearn.metrics import average_precision_score, roc_auc_score  # here: prediction never needs it

    positives = y_true.sum(axis=0)
    ranked = (positives > 0) & (positives < len(y_true))
    roc = roc_auc_score(y_true[:, ranked], probs[:, ranked], average=None) if ranked.any() else []
    precise = positives > 0
    pr = average_precision_score(y_true[:, precise], probs[:, precise], average=None) if precise.any() else []
    per_tag_roc, per_tag_pr = _spread(np.atleast_1d(roc), ranked), _spread(np.atleast_1d(pr), precise)
    return {
        "roc_auc": per_tag_roc,
        "pr_auc": per_tag_pr,
        "macro_roc_auc": float(np.mean(roc)) if ranked.any() else math.nan,
        "macro_pr_auc": float(np.mean(pr)) if precise.any() else math.nan,
    }


def _spread(values: np.ndarray, where: np.ndarray) -> list:
    """values of the tags where `where` holds, None for the others, in tag order."""
    it = iter(values.tolist())
    return [next(it) if defined else None for defined in where]


def best_thresholds(y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per tag, a probability threshold that maximizes its F1 on these tracks (a tag is said when
    its probability is at least the threshold): midway between the lowest score said at the best
    F1 and the next lower score, which keeps that F1 here and leaves a margin either side (the
    lowest positive score itself sits at the edge of the tracks that will come); DEFAULT_THRESHOLD
    for a tag the tracks cannot inform (none of them, or all of them, have it)."""
    from sklearn.metrics import precision_recall_curve  # here: prediction never needs it

    thresholds = []
    for tag in range(y_true.shape[1]):
        positives = int(y_true[:, tag].sum())
        if positives in (0, len(y_true)):
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(y_true[:, tag], probs[:, tag])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1]))  # the last point has no threshold; cuts rise, argmax takes the lowest
        thresholds.append(float((cuts[best] + (cuts[best - 1] if best else 0.0)) / 2))
    return thresholds


def score_tags(clip_scores: list[torch.Tensor], targets: list[list[int]]) -> dict:
    """Validation of a multi-label model, from each track's clip tag log-probabilities: the clips'
    binary cross-entropy, track-level macro ROC-AUC and PR-AUC, and the tags' best thresholds."""
    clip_targets = torch.tensor(per_clip(targets, clip_scores), dtype=torch.float32)
    probs = track_probs(clip_scores, multi_label=True).numpy()
    y_true = np.asarray(targets)
    aucs = tag_aucs(y_true, probs)
    return {
        "loss": torch.nn.functional.binary_cross_entropy(torch.cat(clip_scores).exp(), clip_targets).item(),
        "roc_auc": aucs["macro_roc_auc"],
        "pr_auc": aucs["macro_pr_auc"],
        "thresholds": best_thresholds(y_true, probs),
    }
