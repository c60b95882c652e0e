"""The built-in models and feature kinds, registered by name (see genrenet.registry).

Adding a model is one class (a torch.nn.Module returning {"logits", "embedding"}) and one
register_model line here, or in your own code for a model that lives outside genrenet.
"""

from genrenet.classic import ClassicModel, ClassicSettings
from genrenet.features import mel_extractor
from genrenet.models import CNNSettings, ResidualCNN, SmallCNN
from genrenet.musicnn import N_MELS, MusicnnSettings, build_musicnn, musicnn_extractor, musicnn_parameter_groups
from genrenet.probe import (
    EmbeddingHead,
    ProbeSettings,
    TaggerClassicSettings,
    embedding_extractor,
    embedding_keys,
    embedding_width,
)
from genrenet.registry import FeatureKind, ModelEntry, register_features, register_model


def handcrafted_extractor(config):
    """Waveforms [clips, samples] -> handcrafted statistics [clips, features] (genrenet.handcrafted)."""
    from genrenet.handcrafted import HandcraftedFeatures  # librosa loads slowly; only the classic models need it

    return HandcraftedFeatures(
        config.audio.sample_rate,
        n_fft=config.features.n_fft,
        hop_length=config.features.hop_length,
        n_mfcc=config.features.n_mfcc,
    )


def handcrafted_width(config) -> int:
    from genrenet.handcrafted import feature_names  # librosa loads slowly; only the classic models need it

    return len(feature_names(config.features.n_mfcc))


register_features(FeatureKind("mel", extractor=mel_extractor, width=lambda config: config.features.n_mels, framed=True))
register_features(
    FeatureKind(
        "musicnn_mel",
        extractor=musicnn_extractor,
        width=lambda config: N_MELS,
        framed=True,
        frame_hop=lambda config: 256,  # musicnn's front end, whatever the features section says
    )
)
register_features(
    FeatureKind(
        "musicnn_embedding",
        extractor=embedding_extractor,
        width=embedding_width,
        framed=False,
        model_keys=embedding_keys,
    )
)
register_features(FeatureKind("handcrafted", extractor=handcrafted_extractor, width=handcrafted_width, framed=False))

register_model(ModelEntry("small_cnn", CNNSettings, "mel", SmallCNN.from_settings, family="cnn"))
register_model(ModelEntry("resnet_cnn", CNNSettings, "mel", ResidualCNN.from_settings, family="cnn"))
register_model(
    ModelEntry(
        "musicnn",
        MusicnnSettings,
        "musicnn_mel",
        build_musicnn,
        family="pretrained",
        parameter_groups=musicnn_parameter_groups,
    )
)
register_model(
    ModelEntry("musicnn_probe", ProbeSettings, "musicnn_embedding", EmbeddingHead.from_settings, family="pretrained")
)
register_model(
    ModelEntry("svm", ClassicSettings, "handcrafted", ClassicModel.from_settings, fitted=True, family="classic")
)
register_model(
    ModelEntry(
        "random_forest", ClassicSettings, "handcrafted", ClassicModel.from_settings, fitted=True, family="classic"
    )
)
register_model(
    ModelEntry("logreg", ClassicSettings, "handcrafted", ClassicModel.from_settings, fitted=True, family="classic")
)
for name in ("musicnn_svm", "musicnn_logreg"):
    register_model(
        ModelEntry(
            name, TaggerClassicSettings, "musicnn_embedding", ClassicModel.from_settings, fitted=True, family="classic"
        )
    )
