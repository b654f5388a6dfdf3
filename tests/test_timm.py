"""timm models (random weights, 3x64x64) through the whole library path: `TaperPruner` to a
budget, the snapshot physically pruned, equal to the masked model, and exported to ONNX
with its onnxruntime check passing — without any exclusion.

timm's `BatchNormAct2d` (EfficientNet, MobileNetV3, RegNet, …) is a BatchNorm2d subclass
whose forward also applies an activation: its mask goes on its output, so the activation
stays (a masked plain batch norm would drop it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

from taperprune import PrunerConfig, TaperPruner, count_macs  # noqa: E402
from taperprune.export import export_onnx  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 64, 64)
BUDGET = 0.5
MODELS = ("resnet18", "convnext_atto", "efficientnet_b0")


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", MODELS)
def test_timm_model_prunes_exports_and_runs_in_onnxruntime(name: str, tmp_path: Path) -> None:
    model = build(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((4, *SHAPE), generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    before = outputs(model, x)

    pruner = TaperPruner(
        model,
        torch.zeros((1, *SHAPE)),
        [BUDGET],
        schedule="oneshot",
        config=PrunerConfig(warmup_steps=1),
    )
    # At full width the masked model is the model (no layer lost its activation).
    torch.testing.assert_close(outputs(model, x), before, rtol=1e-5, atol=1e-6)

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()  # before pruner.step: the snapshot holds the last weights
        pruner.step(loss)
        opt.zero_grad()
        if pruner.done:
            break
    assert pruner.done

    (target,) = pruner.budgets
    small = pruner.export(BUDGET)
    assert count_macs(small.eval(), x[:1]) == pruner.snapshots[target].macs <= target
    ref = outputs(model, x)  # the masked model
    scale = float(ref.abs().max())
    torch.testing.assert_close(outputs(small, x), ref, rtol=0, atol=1e-5 * scale)

    check = export_onnx(small, SHAPE, tmp_path / f"{name}.onnx")
    assert check is not None and check.passed, check.describe()


def test_masks_keep_batchnorm_act_layers_activation() -> None:
    model = build("efficientnet_b0")
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    before = outputs(model, x)
    TaperPruner(model, torch.zeros((1, *SHAPE)), [BUDGET], check=False)
    torch.testing.assert_close(outputs(model, x), before, rtol=1e-5, atol=1e-6)
