"""Models: the registry, output contract and parameter count."""

import pytest
import torch

from genrenet.errors import UserError
from genrenet.models import CNNSettings, ResidualCNN, SmallCNN, count_flops, count_parameters, describe_models
from genrenet.registry import MODELS, model_entry

CNN_NAMES = sorted(name for name, entry in MODELS.items() if entry.family == "cnn")


def build_model(settings: CNNSettings, n_classes: int, n_mels: int) -> torch.nn.Module:
    return model_entry(settings.name).build(settings, n_classes, n_mels)


@pytest.mark.parametrize("n_mels,frames", [(32, 32), (16, 63), (40, 5), (8, 1)])
@pytest.mark.parametrize("width", [4, 8])
def test_small_cnn_outputs(n_mels, frames, width):
    torch.manual_seed(0)
    model = build_model(CNNSettings(name="small_cnn", width=width, dropout=0.1), n_classes=5, n_mels=n_mels).eval()
    assert isinstance(model, SmallCNN)
    with torch.no_grad():
        out = model(torch.randn(3, 1, n_mels, frames))
    assert set(out) == {"logits", "embedding"}
    assert out["logits"].shape == (3, 5)
    assert out["embedding"].shape == (3, 2 * 8 * width)  # mean and max of the last block's channels
    assert torch.isfinite(out["logits"]).all()


def test_batch_items_are_independent_in_eval_mode():
    torch.manual_seed(0)
    model = build_model(CNNSettings(width=4), 3, 32).eval()
    x = torch.randn(4, 1, 32, 20)
    with torch.no_grad():
        together = model(x)["logits"]
        alone = torch.cat([model(x[i : i + 1])["logits"] for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CNN_NAMES)
def test_model_can_learn(name):
    torch.manual_seed(0)
    model = build_model(CNNSettings(name=name, width=4, dropout=0.0), 2, 16)
    x = torch.randn(16, 1, 16, 16)
    x[8:, :, :8] += 3.0  # class 1: louder low bands
    y = torch.tensor([0] * 8 + [1] * 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(x)["logits"].argmax(1) == y).all()


def test_unknown_model_name():
    with pytest.raises(UserError) as info:
        model_entry("resnet999")
    assert "resnet999" in str(info.value) and "small_cnn" in str(info.value)


def test_registry():
    assert "small_cnn" in MODELS
    assert isinstance(build_model(CNNSettings(name="resnet_cnn", width=4), 3, 32), ResidualCNN)


def test_parameter_count():
    model = build_model(CNNSettings(width=4), 3, 32)
    count = count_parameters(model)
    assert count == sum(p.numel() for p in model.parameters()) > 0
    # width 4 -> channels 4, 8, 16, 32: convs without bias, batch norms (weight+bias), linear head
    convs = 9 * (1 * 4 + 4 * 8 + 8 * 16 + 16 * 32)
    norms = 2 * (1 + 4 + 8 + 16 + 32)
    head = 64 * 3 + 3
    assert count == convs + norms + head
    wider = count_parameters(build_model(CNNSettings(width=8), 3, 32))
    assert wider > count
    # independent of n_mels (global pooling)
    assert count_parameters(build_model(CNNSettings(width=4), 3, 128)) == count


@pytest.mark.parametrize("n_mels,frames", [(128, 130), (64, 216), (32, 16), (96, 17), (40, 5)])
def test_residual_cnn_outputs(n_mels, frames):
    torch.manual_seed(0)
    model = build_model(CNNSettings(name="resnet_cnn", width=8), n_classes=7, n_mels=n_mels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, n_mels, frames))
    assert set(out) == {"logits", "embedding"}
    assert out["logits"].shape == (2, 7)
    assert out["embedding"].shape == (2, 2 * 4 * 8)  # mean and max of the last block's 4 * width channels
    assert torch.isfinite(out["logits"]).all()


def test_residual_cnn_size_and_independence_in_eval_mode():
    model = ResidualCNN(n_classes=10, n_mels=128)  # default width
    assert 300_000 <= count_parameters(model) <= 2_000_000
    assert count_parameters(ResidualCNN(n_classes=10, n_mels=64)) == count_parameters(model)
    torch.manual_seed(0)
    small = ResidualCNN(n_classes=3, n_mels=32, width=4).eval()
    x = torch.randn(3, 1, 32, 20)
    with torch.no_grad():
        together = small(x)["logits"]
        alone = torch.cat([small(x[i : i + 1])["logits"] for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_count_flops_by_hand():
    model = SmallCNN(n_classes=3, n_mels=16, width=2).train()
    # 16 x 16 input; ceil-mode pools give 8 x 8, 4 x 4, 2 x 2 at blocks 2-4; channels 2, 4, 8, 16
    macs = 9 * (1 * 2 * 256 + 2 * 4 * 64 + 4 * 8 * 16 + 8 * 16 * 4) + 32 * 3
    assert count_flops(model, 16, 16) == 2 * macs
    assert model.training  # mode restored
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_describe_models_covers_the_registry():
    rows = describe_models()
    assert sorted(row["name"] for row in rows) == CNN_NAMES
    for row in rows:
        assert row["parameters"] == count_parameters(build_model(CNNSettings(name=row["name"]), 10, 128))
        assert 0 < row["mflops_64x216"] and 0 < row["mflops_128x130"]


@pytest.mark.parametrize("name", ["small_cnn", "resnet_cnn"])
def test_frequency_input_norm(name):
    torch.manual_seed(0)
    config = CNNSettings(name=name, width=4, input_norm="frequency")
    model = build_model(config, n_classes=3, n_mels=16)
    x = torch.randn(8, 1, 16, 20) * torch.linspace(1, 20, 16)[:, None] + torch.linspace(-80, 0, 16)[:, None]
    normed = model.input_norm(x)  # training mode: batch statistics, per mel band
    torch.testing.assert_close(normed.mean(dim=(0, 1, 3)), torch.zeros(16), rtol=0, atol=1e-4)
    torch.testing.assert_close(normed.std(dim=(0, 1, 3), unbiased=False), torch.ones(16), rtol=0, atol=1e-3)
    model.eval()
    with torch.no_grad():
        assert model(x)["logits"].shape == (8, 3)


def test_global_input_norm_is_the_default_and_keeps_checkpoint_keys():
    assert CNNSettings().input_norm == "global"
    model = build_model(CNNSettings(name="resnet_cnn", width=4), 3, 16)
    assert isinstance(model.input_norm, torch.nn.BatchNorm2d) and model.input_norm.num_features == 1
    assert "input_norm.weight" in model.state_dict()


@pytest.mark.parametrize("name", ["small_cnn", "resnet_cnn"])
def test_time_pooling_keeps_frequency_rows_apart(name):
    torch.manual_seed(0)
    model = build_model(CNNSettings(name=name, width=4, pooling="time"), n_classes=3, n_mels=40).eval()
    x = torch.randn(2, 1, 40, 50)
    with torch.no_grad():
        out = model(x)
        maps = model.blocks(model.input_norm(x))  # [batch, channels, rows, frames]
    rows = maps.shape[2]
    assert rows == 3  # 40 mels pooled by 2 four times, rounding up
    assert model.head.in_features == 2 * maps.shape[1] * rows == out["embedding"].shape[1]
    torch.testing.assert_close(
        out["embedding"], torch.cat([maps.mean(dim=3).flatten(1), maps.amax(dim=3).flatten(1)], 1)
    )
    with torch.no_grad():  # still independent of the clip length
        assert model(torch.randn(2, 1, 40, 17))["logits"].shape == (2, 3)
    # a global-pooling model of the same width has a head of 2 x channels
    assert build_model(CNNSettings(name=name, width=4), 3, 40).head.in_features == 2 * maps.shape[1]


def test_time_pooling_tells_a_band_low_from_the_same_band_high():
    """The spectral envelope reaches the head: a band of energy low or high in the spectrum gives
    embeddings that differ far more with time pooling than with global pooling."""
    torch.manual_seed(0)
    low, high = torch.full((1, 1, 64, 40), -60.0), torch.full((1, 1, 64, 40), -60.0)
    low[:, :, 8:24], high[:, :, 40:56] = 0.0, 0.0
    gaps = {}
    for pooling in ("global", "time"):
        torch.manual_seed(0)
        model = build_model(CNNSettings(name="resnet_cnn", width=4, pooling=pooling), 3, 64).eval()
        with torch.no_grad():
            a, b = model(low)["embedding"], model(high)["embedding"]
        gaps[pooling] = ((a - b).norm() / (a.norm() + b.norm())).item()
    assert gaps["time"] > 2 * gaps["global"]


@pytest.mark.parametrize("name", CNN_NAMES)
def test_channels_last_layout_gives_the_same_logits(name):
    torch.manual_seed(0)
    model = build_model(CNNSettings(name=name, width=4), 3, 16).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.randn(2, 1, 16, 24)
    with torch.no_grad():
        fast = model(x)["logits"]
        # The same weights run row-major, layer by layer, outside forward (which forces channels-last).
        model.to(memory_format=torch.contiguous_format)
        hidden = model.blocks(model.input_norm(x).contiguous())
        assert hidden.is_contiguous()
        plain = model.head(torch.cat([hidden.mean(dim=(2, 3)), hidden.amax(dim=(2, 3))], dim=1))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
