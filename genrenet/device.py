"""Which torch device a command runs on."""

import torch

from genrenet.errors import UserError


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """auto picks CUDA when PyTorch sees a GPU, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting}=cuda, but no CUDA GPU is visible to PyTorch (use auto or cpu)")
    return torch.device(name)
