"""`--weights` as a torchvision weights name: resolved into torch's hub cache, reused offline,
a failed download named with what to do; and a run that starts from such weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from taperprune.errors import TaperpruneError
from taperprune.files import load_weights
from taperprune.run.config import RunConfig
from taperprune.run.pipeline import run_prune
from taperprune.run.pretrained import cache_path, is_weights_name, resolve_weights

URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Path]:
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(before)


def _cache_resnet18(num_classes: int) -> dict[str, torch.Tensor]:
    """Put a torchvision-format resnet18 state dict where a download would have put it."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=num_classes).state_dict()
    path = cache_path(URL)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _no_network(url: str, dst: str) -> None:
    raise OSError("no network")


def test_names_and_paths_are_told_apart(tmp_path: Path):
    assert is_weights_name("IMAGENET1K_V1")
    assert is_weights_name("DEFAULT")
    assert is_weights_name("ResNet18_Weights.IMAGENET1K_V1")
    assert not is_weights_name("weights.safetensors")
    assert not is_weights_name(str(tmp_path / "model.pth"))
    assert resolve_weights("runs/x/model.safetensors", "resnet18") == Path(
        "runs/x/model.safetensors"
    )


@pytest.mark.parametrize("spec", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"])
def test_a_cached_torchvision_file_is_used_without_downloading(hub: Path, spec: str):
    state = _cache_resnet18(1000)
    path = resolve_weights(spec, "resnet18", download=_no_network)
    assert path == hub / "checkpoints" / Path(URL).name
    loaded = load_weights(path)
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])


def test_a_download_lands_atomically_in_the_cache(hub: Path):
    def fake_download(url: str, dst: str) -> None:
        assert url == URL and dst.endswith(".partial")
        torch.save(torchvision.models.resnet18().state_dict(), dst)

    path = resolve_weights("IMAGENET1K_V1", "resnet18", download=fake_download)
    assert path.is_file() and not list(path.parent.glob("*.partial"))
    assert "conv1.weight" in load_weights(path)


def test_a_failed_download_says_what_to_do(hub: Path):
    with pytest.raises(TaperpruneError) as err:
        resolve_weights("IMAGENET1K_V1", "resnet18", download=_no_network)
    text = str(err.value)
    assert URL in text and "--weights PATH" in text and str(cache_path(URL)) in text
    assert not list((hub / "checkpoints").glob("*"))  # no partial file left behind


def test_unknown_names_list_the_choices(hub: Path):
    with pytest.raises(TaperpruneError, match="IMAGENET1K_V1"):
        resolve_weights("IMAGENET9K_V7", "resnet18", download=_no_network)
    with pytest.raises(TaperpruneError, match="no torchvision weights"):
        resolve_weights("IMAGENET1K_V1", "demo_cnn", download=_no_network)
    with pytest.raises(TaperpruneError, match="not a torchvision weights name"):
        resolve_weights("Nope_Weights.IMAGENET1K_V1", "resnet18", download=_no_network)


def test_a_run_starts_from_torchvision_weights_by_name(hub: Path, tmp_path: Path):
    state = _cache_resnet18(10)
    cfg = RunConfig(
        model="resnet18",
        data="synthetic:3x32x32:10",
        weights="IMAGENET1K_V1",
        budgets=("0.5",),
        out=str(tmp_path / "run"),
        taper_epochs=0.1,
        finetune_epochs=0.0,
        warmup_steps=1,
        train_limit=256,
        test_limit=64,
        batch_size=32,
        bn_recalibration_batches=1,
        onnx=False,
        latency_batches=(),
        report=False,
    )
    run_prune(cfg)
    base = load_file(str(tmp_path / "run" / "base" / "model.safetensors"))
    assert torch.equal(base["conv1.weight"], state["conv1.weight"])  # no pretraining ran
