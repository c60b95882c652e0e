"""genrenet: music-genre recognition and audio classification on mel spectrograms."""

from genrenet import catalog  # noqa: F401  registers the built-in models and feature kinds
