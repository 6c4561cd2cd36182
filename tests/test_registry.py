import pytest
import torch

from da.backbones import BACKBONES, BackboneConfig, build_model
from da.errors import ConfigError
from da.methods import METHODS


def test_methods_registry_lists_names_on_unknown():
    assert "source_only" in METHODS.names()
    with pytest.raises(ConfigError, match="valid methods: .*source_only"):
        METHODS.get("nope")


def test_backbones_registered():
    for name in ("lenet", "resnet18", "resnet50", "vgg16"):
        assert name in BACKBONES


@pytest.mark.parametrize(("name", "size", "dim"), [("lenet", 28, 800), ("resnet18", 32, 512), ("vgg16", 32, 512)])
def test_backbone_feature_dims_and_model_outputs(name, size, dim):
    backbone, feature_dim = BACKBONES.get(name)(weights=None, in_channels=1, image_size=size)
    assert feature_dim == dim
    model = build_model(BackboneConfig(name=name, weights=None, bottleneck_dim=64), 10, 1, size)
    model.eval()
    logits, feats = model(torch.randn(2, 1, size, size))  # grey input also works for ImageNet models
    assert logits.shape == (2, 10) and feats.shape == (2, 64)


def test_lenet_refuses_weights():
    with pytest.raises(ConfigError, match="checkpoint"):
        BACKBONES.get("lenet")(weights="IMAGENET1K_V1")
