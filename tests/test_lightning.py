"""`TaperPruneCallback` in a real `lightning.Trainer.fit` on the CPU: every budget reached
with its snapshot, one pruner step per optimizer step under gradient accumulation, the
pruning state in Lightning checkpoints, and exported models equal to the masked one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

from taperprune import PrunerConfig, count_macs  # noqa: E402
from taperprune.errors import TaperpruneError  # noqa: E402
from taperprune.lightning import TaperPruneCallback  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used"),
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before"),
    pytest.mark.filterwarnings("ignore:`isinstance.treespec, LeafSpec.` is deprecated"),
]

SHAPE = (1, 8, 8)
LIGHTNING = {"lightning", "pytorch_lightning"}


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


class Classifier(L.LightningModule):
    """A tiny CNN in `self.net`; records the loss of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader(n: int = 128, batch: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, *SHAPE), generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def trainer(max_steps: int, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,  # type: ignore[arg-type]
    )


def callback(budgets: list[float], steps: int, **kwargs: object) -> TaperPruneCallback:
    return TaperPruneCallback(
        budgets,
        torch.zeros((1, *SHAPE)),
        submodule="net",
        steps=steps,
        config=PrunerConfig(warmup_steps=2),
        **kwargs,
    )


def assert_same_function(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn((8, *SHAPE), generator=torch.Generator().manual_seed(1))
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_fit_reaches_every_budget_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Classifier()
    cb = callback([0.5, 0.25], steps=10, stop_when_done=True)
    t = trainer(60, callbacks=[cb])
    t.fit(module, loader())

    pruner = cb.pruner
    assert pruner is not None and pruner.model is module.net
    assert pruner.done
    assert t.global_step < 60  # stop_when_done ended fit once the last snapshot was taken
    assert len(pruner.trace) == t.global_step  # one pruner step per optimizer step
    assert sorted(cb.snapshots, reverse=True) == pruner.budgets
    example = torch.zeros((1, *SHAPE))
    for target, snap in cb.snapshots.items():
        assert snap.macs <= target
        small = cb.export(target)
        assert count_macs(small.eval(), example) == snap.macs
    assert 0 < t.callback_metrics["taperprune/macs"] <= 0.25

    current = cb.export()  # the masks now, physically removed
    assert count_macs(current.eval(), example) == pytest.approx(pruner.macs)
    assert_same_function(module.net, current)

    # The pruning state travels in Lightning checkpoints; fit(ckpt_path=...) restores it.
    t.save_checkpoint(tmp_path / "last.ckpt")
    resumed = TaperPruneCallback([0.5, 0.25], example, submodule="net", steps=10)
    L.Trainer(
        max_steps=t.global_step + 1,
        accelerator="cpu",
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[resumed],
    ).fit(Classifier(), loader(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.pruner is not None and resumed.pruner.done
    assert torch.equal(resumed.pruner.keep, pruner.keep)
    assert resumed.snapshots.keys() == cb.snapshots.keys()


def test_gradient_accumulation_steps_the_pruner_once_per_optimizer_step() -> None:
    torch.manual_seed(0)
    module = Classifier()
    cb = callback([0.5], steps=50)  # more taper steps than the run has: it ends early
    t = trainer(4, accumulate_grad_batches=2, callbacks=[cb])
    with pytest.warns(UserWarning, match="training ended before the last budget"):
        t.fit(module, loader())
    assert cb.pruner is not None and not cb.pruner.done
    assert t.global_step == 4 and len(module.losses) == 8
    assert len(cb.pruner.trace) == 4
    # The loss the pruner sees is the mean over the accumulated micro-batches.
    for k, rec in enumerate(cb.pruner.trace):
        assert rec.loss == pytest.approx(sum(module.losses[2 * k : 2 * k + 2]) / 2, rel=1e-5)


def test_fp16_loss_scale_does_not_reach_the_scores() -> None:
    """With a GradScaler (fp16 AMP) the pruner sees the unscaled loss and mask gradients."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    def run(**kwargs: object) -> tuple[Classifier, TaperPruneCallback]:
        torch.manual_seed(0)
        module = Classifier()
        cb = callback([0.5], steps=50)
        t = trainer(3, accumulate_grad_batches=2, callbacks=[cb], **kwargs)
        with pytest.warns(UserWarning, match="training ended before the last budget"):
            t.fit(module, loader())
        return module, cb

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    amp_module, amp = run(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    _, plain = run()
    assert scaler.get_scale() == 1024.0  # no overflow: every step was a real one
    assert amp.pruner is not None and plain.pruner is not None
    for k, rec in enumerate(amp.pruner.trace):
        assert rec.loss == pytest.approx(sum(amp_module.losses[2 * k : 2 * k + 2]) / 2, rel=1e-5)
    torch.testing.assert_close(amp.pruner.scores, plain.pruner.scores, rtol=0.05, atol=1e-9)


def test_whole_lightning_module_and_errors() -> None:
    torch.manual_seed(0)
    module = Classifier()
    cb = TaperPruneCallback(
        [0.5],
        torch.zeros((1, *SHAPE)),
        steps=3,
        config=PrunerConfig(warmup_steps=2),
        stop_when_done=True,
    )
    with pytest.raises(TaperpruneError, match="call trainer.fit first"):
        cb.export()
    trainer(30, callbacks=[cb]).fit(module, loader())
    assert cb.pruner is not None and cb.pruner.model is module and cb.pruner.done
    assert_same_function(module, cb.export())

    bad = TaperPruneCallback([0.5], torch.zeros((1, *SHAPE)), submodule="backbone")
    with pytest.raises(TaperpruneError, match="no attribute 'backbone'"):
        trainer(1, callbacks=[bad]).fit(Classifier(), loader())


def test_only_taperprune_lightning_imports_lightning() -> None:
    """`import taperprune` and the library API stay free of Lightning (and fast)."""
    src = Path(__file__).parents[1] / "src" / "taperprune"
    for path in src.rglob("*.py"):
        if path.name == "lightning.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] in LIGHTNING], (path, names)
