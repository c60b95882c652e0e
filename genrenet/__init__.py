"""genrenet: music-genre recognition and audio classification on mel spectrograms."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genrenet")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0+unknown"

from genrenet.stack import require  # noqa: E402

require()  # torch, torchaudio, soundfile, sklearn import, or one line names what is broken and what is needed

from genrenet import catalog  # noqa: E402,F401  registers the built-in models and feature kinds
from genrenet.classifier import Classifier  # noqa: E402,F401  the Python API: Classifier.load(checkpoint).predict(...)
