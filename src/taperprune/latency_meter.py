"""Where and how a latency budget is timed: the settings (runtime, batch, threads) and the
meter that times one layer alone or a whole network, in eager torch or onnxruntime."""

from __future__ import annotations

import copy
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .errors import TaperpruneError
from .latency import MAX_SECONDS, MIN_SECONDS, RUNTIMES, Latency, onnx_latency, torch_latency


@dataclass(frozen=True)
class LatencySettings:
    """Where a latency budget is measured: runtime, batch and intra-op threads."""

    runtime: str = "onnxruntime"
    batch: int = 1
    threads: int = 0  # 0: torch's default here (`latency.default_threads`)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise TaperpruneError(
                f"unknown latency runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}"
            )
        if self.batch < 1 or self.threads < 0:
            raise TaperpruneError(
                f"latency batch must be ≥ 1 and threads ≥ 0 (0: the default), got batch "
                f"{self.batch}, threads {self.threads}"
            )

    def resolved_threads(self) -> int:
        return self.threads or torch.get_num_threads()


class Meter(Protocol):
    """Times one layer alone and whole networks, in milliseconds, at one batch size."""

    def layer_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float: ...

    def net_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float: ...


@dataclass
class RuntimeMeter:
    """The real meter: eager torch or onnxruntime on this machine's CPU."""

    settings: LatencySettings
    runs: int = 20
    max_seconds: float = 1.0  # per layer timing; a whole network gets latency.MAX_SECONDS
    # A layer is timed for at least this long (a network for latency.MIN_SECONDS): a table
    # holds hundreds of layer timings, so it gets less than a whole network.
    layer_min_seconds: float = 0.1
    # A network is timed in this many windows (a fresh onnxruntime session each) and the
    # median window kept: one window's median moved by 10-18 % between back-to-back
    # repeats on a shared 2-core VM, and one slow window should not decide a snapshot.
    net_rounds: int = 3
    _overhead: dict[tuple[int, ...], float] = field(default_factory=dict)

    def layer_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        """The layer's time; in onnxruntime less the cost of a call that does nothing on the
        same input (a network pays that once, not once per layer)."""
        limits = (self.layer_min_seconds, self.max_seconds)
        ms = self._time(module, input_shape, *limits, single=True)
        if self.settings.runtime == "onnxruntime":
            if input_shape not in self._overhead:
                self._overhead[input_shape] = self._time(
                    nn.Identity(), input_shape, *limits, single=True
                )
            ms = max(0.0, ms - self._overhead[input_shape])
        return ms

    def net_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        """The median of `net_rounds` windows of at least latency.MIN_SECONDS each."""
        return self._time(
            module, input_shape, MIN_SECONDS, MAX_SECONDS, single=False, rounds=self.net_rounds
        )

    def _time(
        self,
        module: nn.Module,
        shape: tuple[int, ...],
        min_seconds: float,
        max_seconds: float,
        *,
        single: bool,
        rounds: int = 1,
    ) -> float:
        s = self.settings
        # A CPU float copy: the caller's model (maybe on a GPU, maybe training) is untouched.
        module = copy.deepcopy(module).cpu().float().eval()
        threads = s.resolved_threads()

        def median(measure: Callable[..., Latency], target: nn.Module | Path) -> float:
            return statistics.median(
                measure(
                    target,
                    shape,
                    s.batch,
                    threads=threads,
                    runs=self.runs,
                    min_seconds=min_seconds,
                    max_seconds=max_seconds,
                ).median_ms
                for _ in range(rounds)
            )

        if s.runtime == "torch":
            return median(torch_latency, module)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            if single:
                _single_layer_onnx(module, shape, path)
            else:
                from .export import export_onnx

                export_onnx(module, shape, path, check=False)
            return median(onnx_latency, path)


def _single_layer_onnx(module: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """One Conv or MatMul node with its weights (or an Identity), written directly: no
    export trace, so a table of many grid points is quick."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits: list[Any] = []
    if isinstance(module, nn.Identity):  # what a call costs that computes nothing
        nodes = [helper.make_node("Identity", ["x"], ["y"])]
    elif isinstance(module, nn.Linear):
        inits.append(numpy_helper.from_array(module.weight.detach().numpy().T.copy(), "wt"))
        out = "y0" if module.bias is not None else "y"
        nodes = [helper.make_node("MatMul", ["x", "wt"], [out])]
        if module.bias is not None:
            inits.append(numpy_helper.from_array(module.bias.detach().numpy(), "b"))
            nodes.append(helper.make_node("Add", ["y0", "b"], ["y"]))
    else:
        conv = module
        assert isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        inits.append(numpy_helper.from_array(conv.weight.detach().numpy(), "w"))
        if conv.bias is not None:
            inits.append(numpy_helper.from_array(conv.bias.detach().numpy(), "b"))
        nodes = [
            helper.make_node(
                "Conv",
                ["x", "w", *(["b"] if conv.bias is not None else [])],
                ["y"],
                kernel_shape=list(conv.kernel_size),
                strides=list(conv.stride),
                pads=[int(p) for p in conv.padding] * 2,
                dilations=list(conv.dilation),
                group=conv.groups,
            )
        ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "layer", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
