"""Scores stage: clip-level log-probabilities from a model, aggregated to one decision per track.

Track decisions average the clips' log-probabilities (a product of clip probabilities, in the
log domain), then renormalize, so a track's probabilities sum to one.
"""

import torch


@torch.no_grad()
def clip_log_probs(model: torch.nn.Module, features: list[torch.Tensor], device: torch.device,
                   batch_size: int = 64) -> list[torch.Tensor]:
    """Per track, log-probabilities of every clip: a list of [clips, classes] tensors on the CPU."""
    model.eval()
    flat = torch.cat(features) if features else torch.empty(0)
    outputs = []
    for start in range(0, len(flat), batch_size):
        batch = flat[start:start + batch_size].float().unsqueeze(1).to(device)
        outputs.append(torch.log_softmax(model(batch)["logits"].float(), dim=1).cpu())
    log_probs = torch.cat(outputs) if outputs else torch.empty(0)
    return list(torch.split(log_probs, [len(f) for f in features]))


def track_log_probs(clip_scores: list[torch.Tensor]) -> torch.Tensor:
    """[tracks, classes]: the mean of each track's clip log-probabilities, renormalized."""
    means = torch.stack([scores.mean(dim=0) for scores in clip_scores])
    return torch.log_softmax(means, dim=1)
