"""The ready ImageNet recipes under recipes/: they load, their budgets fit their models, and
each runs a few steps end to end on a tiny ImageFolder the test makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from taperprune.models import build_model, default_input_shape
from taperprune.resource import check_budgets
from taperprune.run.config import config_from_mapping
from taperprune.run.pipeline import run_prune
from taperprune.run.pretrained import is_weights_name, torchvision_weights

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def _imagefolder(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("ant", "bee"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_there_are_the_three_recipes() -> None:
    assert [p.name for p in RECIPES] == [
        "alexnet_bvlc_imagenet_0.411g.yaml",
        "resnet50_imagenet_2g.yaml",
        "vgg16_imagenet_3.87g.yaml",
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_its_budgets_fit_the_model(recipe: Path) -> None:
    cfg = config_from_mapping(yaml.safe_load(recipe.read_text()), source=recipe)
    shape = default_input_shape(cfg.model)
    model = build_model(cfg.model, num_classes=1000).eval()
    budgets = check_budgets(model, torch.zeros(1, *shape), list(cfg.budgets))
    assert budgets == sorted(budgets, reverse=True) and len(budgets) == 2
    if cfg.weights and is_weights_name(cfg.weights):  # a torchvision name for this model
        assert torchvision_weights(cfg.weights, cfg.model).url.endswith(".pth")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_a_few_steps_on_a_tiny_imagefolder(recipe: Path, tmp_path: Path) -> None:
    settings = yaml.safe_load(recipe.read_text())
    small_input = 227 if "alexnet" in recipe.name else 32
    settings |= {
        "data": f"imagefolder:{_imagefolder(tmp_path / 'data')}",
        "weights": None,
        "pretrain_epochs": 0.0,
        "budgets": ["0.7", "0.5"],  # the recipe's absolute budgets are for 224 px
        "taper_epochs": 1.0,
        "finetune_epochs": 0.5,
        "warmup_steps": 1,
        "batch_size": 4,
        "image_size": small_input,
        "workers": 0,
        "device": "cpu",
        "amp": None,
        "bn_recalibration_batches": 1,
        "onnx": False,
        "latency_batches": [],
        "report": False,
        "out": str(tmp_path / "run"),
    }
    result = run_prune(config_from_mapping(settings, source=recipe))
    assert [s.label for s in result.snapshots] == ["70pct", "50pct"]
    assert all(s.macs <= s.target for s in result.snapshots)
