"""Deployable files of a pruned model — ONNX and TorchScript — each checked against PyTorch.

A check runs the exported file on a random batch and compares it with the PyTorch model:
it passes when max |exported − torch| ≤ 1e-4 × max |torch| (the output scale).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import TaperpruneError
from .files import atomic_path

RELATIVE_TOLERANCE = 1e-4
CHECK_BATCH = 4
FORMATS = ("onnx", "torchscript", "safetensors")


@dataclass(frozen=True)
class ExportCheck:
    """How closely an exported file reproduces the PyTorch model on a random batch."""

    format: str
    path: str
    batch: int
    max_abs_diff: float
    output_scale: float
    tolerance: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.format} check {verdict}: max |Δ| = {self.max_abs_diff:.2e} on a random batch "
            f"of {self.batch} (allowed {self.tolerance:.2e} = 1e-4 × output scale "
            f"{self.output_scale:.3g})"
        )


def _compare(fmt: str, path: Path, ref: torch.Tensor, got: torch.Tensor) -> ExportCheck:
    scale = float(ref.abs().max()) or 1.0
    diff = float((ref - got).abs().max())
    tol = RELATIVE_TOLERANCE * scale
    return ExportCheck(fmt, path.name, ref.shape[0], diff, scale, tol, diff <= tol)


def _reference(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((CHECK_BATCH, *input_shape), generator=g)
    with torch.no_grad():
        ref = model(x)
    if not isinstance(ref, torch.Tensor):
        raise TaperpruneError(
            f"the model returns {type(ref).__name__}; export needs a model returning one tensor"
        )
    return x, ref


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, *, check: bool = True
) -> ExportCheck | None:
    """Write `model` (eval mode, CPU, float32) to ONNX with a dynamic batch axis; check it."""
    model = model.eval().float().cpu()
    # Batch 2, not 1: from a batch-1 example torch.export specialises the batch of a
    # depthwise conv on a channels-last tensor (ConvNeXt) and the dynamic axis fails.
    example = torch.zeros((2, *input_shape))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The exporter prints its progress; keep the user's console clean.
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_shapes=({0: batch},),
                    verbose=False,
                )
            assert program is not None
            program.save(str(tmp))
        except Exception as exc:
            raise TaperpruneError(f"ONNX export of the model failed: {exc}") from exc
    return check_onnx(model, input_shape, path) if check else None


def check_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> ExportCheck:
    """Run the ONNX file in onnxruntime and compare with the PyTorch model."""
    from .latency import onnx_session

    x, ref = _reference(model.eval().float().cpu(), input_shape)
    session = onnx_session(path, threads=1)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return _compare("onnx", path, ref, torch.from_numpy(out))


def export_torchscript(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, *, check: bool = True
) -> ExportCheck | None:
    """Trace `model` to TorchScript, save it, load it back and compare."""
    model = model.eval().float().cpu()
    example = torch.zeros((1, *input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:
            raise TaperpruneError(f"TorchScript tracing of the model failed: {exc}") from exc
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
        if not check:
            return None
        x, ref = _reference(model, input_shape)
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            got = loaded(x)
    return _compare("torchscript", path, ref, got)


def check_loaded(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, *, trust_model_file: bool = False
) -> ExportCheck:
    """Load a self-contained safetensors file back with `taperprune.load` and compare
    (`trust_model_file`: as for `load`, when the plan names a builder file)."""
    from .plan import load

    x, ref = _reference(model.eval().float().cpu(), input_shape)
    with torch.no_grad():
        got = load(path, trust_model_file=trust_model_file).eval()(x)
    return _compare("safetensors", path, ref, got)
