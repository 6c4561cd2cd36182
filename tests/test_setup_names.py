"""What a run does before it trains, and how it names what it trained: the digits renderings' cache, an empty
``DA_DATA_ROOT``, the backbone's name, the label budget's line."""

from __future__ import annotations

import pytest

import da.data.digits as digits
from da.backbones import BackboneConfig
from da.config import compose
from da.experiment import summary


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "da" / "digits"


def test_the_renderings_are_cached_byte_identical_and_not_rendered_again(cache_home, monkeypatch):
    fresh = digits.render_digits(5, seed=7)
    calls = []
    render = digits.render_digits
    monkeypatch.setattr(digits, "render_digits", lambda *a: calls.append(a) or render(*a))
    first = digits.build_digits(seed=7, samples_per_class=5)
    second = digits.build_digits(seed=7, samples_per_class=5)
    assert len(calls) == 1, "the second task reads the cache"
    assert len(list(cache_home.glob("*.npz"))) == 1
    cached = digits.cached_render(5, 7)
    for a, b in zip(fresh, cached):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert first.source_train.x.numpy().tobytes() == second.source_train.x.numpy().tobytes()
    digits.cached_render(5, 8)  # another seed: its own file
    assert len(calls) == 2 and len(list(cache_home.glob("*.npz"))) == 2


def test_a_damaged_cache_file_is_rendered_again_and_the_key_follows_the_libraries(cache_home, monkeypatch):
    images, _ = digits.cached_render(2, 0)
    (path,) = cache_home.glob("*.npz")
    path.write_bytes(b"not an npz")
    again, _ = digits.cached_render(2, 0)
    assert again.tobytes() == images.tobytes()
    import matplotlib

    key = digits.render_key(2, 0)
    monkeypatch.setattr(matplotlib, "__version__", "0.0")
    assert digits.render_key(2, 0) != key


def test_an_unwritable_cache_only_costs_the_rendering(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file: no folder can be made under it
    images, labels = digits.cached_render(2, 1)
    assert images.tobytes() == digits.render_digits(2, 1)[0].tobytes() and len(labels) == 20


def test_an_empty_data_root_variable_means_unset(monkeypatch):
    monkeypatch.setenv("DA_DATA_ROOT", "")
    assert compose([]).data_root == "~/data"
    monkeypatch.setenv("DA_DATA_ROOT", "/srv/data")
    assert compose([]).data_root == "/srv/data"
    monkeypatch.delenv("DA_DATA_ROOT")
    assert compose([]).data_root == "~/data"


def test_an_empty_data_root_variable_means_unset_for_test_time_runs(monkeypatch):
    from da.tta.config import compose as compose_tta

    monkeypatch.setenv("DA_DATA_ROOT", "")
    assert compose_tta([]).data_root == "~/data"
    monkeypatch.setenv("DA_DATA_ROOT", "/srv/data")
    assert compose_tta([]).data_root == "/srv/data"


def test_timm_and_torchvision_backbones_of_one_name_are_told_apart():
    from da.backbones import backbone_label

    assert backbone_label(BackboneConfig(name="resnet18")) == "resnet18"
    assert backbone_label(BackboneConfig(name="resnet18", library="timm")) == "timm/resnet18"


def test_the_closing_line_names_the_validation_images_of_the_budget(tmp_path):
    run = {"method": "finetune", "dataset": "digits", "source": "sklearn", "target": "sklearn", "seed": 0}
    run.update(backbone="lenet", epochs=3, target_acc=0.5, source_acc=0.9, config={"dataset": {"name": "digits"}})
    run["budget"] = {"train": 80, "val": 20, "test": 1000, "labels_per_class": 10}
    assert "(80 labelled training + 20 validation images)" in summary(run, str(tmp_path / "run"))
    run["budget"] = {"train": 100, "val": 0, "test": 1000}
    assert "(100 labelled training images)" in summary(run, str(tmp_path / "run"))
