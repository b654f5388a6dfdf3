"""Everything a run checks and builds before it trains: device, data, model, weights,
budgets, channel graph (built once, shared by the checks, the base plan and the pruner)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import TaperpruneError
from ..files import load_weights
from ..graph import ChannelGraph, build_graph
from ..inspect_model import check_output
from ..latency_gate import latency_settings
from ..models import build_model, default_input_shape, parse_input_shape
from ..resource import check_budgets
from . import distributed as ddp
from .config import RunConfig
from .data import BatchStream, DataBundle, load_data, parse_data_spec
from .loop import seed_everything
from .pretrained import resolve_weights


@dataclass
class Prepared:
    """A run's inputs, checked."""

    device: torch.device
    data: DataBundle
    stream: BatchStream
    model: nn.Module
    example: torch.Tensor  # one zero input, on the device
    kwargs: dict[str, Any]  # what the model builder was called with
    graph: ChannelGraph
    budgets: list[int]  # MACs


def prepare(cfg: RunConfig, procs: ddp.Procs) -> Prepared:
    """Load data and model and check the budgets and the surgery: every error comes here,
    in seconds, before anything trains."""
    if cfg.budget_unit == "ns" and procs.world > 1:
        # Each process would time its own latency model and decide differently.
        raise TaperpruneError(
            f"latency budgets {list(cfg.budgets)} run in one process, not {procs.world}: "
            "prune on one GPU or CPU, or give the budgets in MACs"
        )
    seed_everything(cfg.seed)
    device = ddp.resolve_device(cfg.device, procs)
    data = load_data(
        cfg.data,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        workers=cfg.workers,
        image_size=cfg.image_size,
        train_limit=cfg.train_limit,
        test_limit=cfg.test_limit,
        pin_memory=device.type == "cuda",
        skip_bad_images=cfg.skip_bad_images,
        input_shape=input_shape(cfg),
    )
    assert data.train_set is not None
    stream = BatchStream(
        data.train_set,
        cfg.batch_size,
        cfg.seed,
        rank=procs.rank,
        world=procs.world,
        workers=cfg.workers,
        pin_memory=data.pin_memory,
    )
    if len(stream) == 0:
        raise TaperpruneError(
            f"data set {cfg.data} has fewer examples than one batch ({cfg.batch_size})"
        )
    kwargs = {
        "num_classes": data.num_classes,
        "in_channels": data.input_shape[0],
        **cfg.model_kwargs,
    }
    model = build_model(cfg.model, **kwargs)
    if cfg.weights:
        state = load_weights(resolve_weights(cfg.weights, cfg.model))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise TaperpruneError(
                f"weights {cfg.weights} do not fit model {cfg.model}: {exc}"
            ) from exc
    model.to(device)
    example = torch.zeros((1, *data.input_shape), device=device)
    check_output(model, example, cfg.model, data.num_classes)
    graph = build_graph(model, example, exclude=cfg.exclude)
    budgets = check_budgets(
        model,
        example,
        list(cfg.budgets),
        exclude=cfg.exclude,
        graph=graph,
        round_to=cfg.method.round_to,
        max_pruning_ratio=cfg.method.max_pruning_ratio,
        latency=latency_settings(cfg.method),
    )
    return Prepared(device, data, stream, model, example, kwargs, graph, budgets)


def input_shape(cfg: RunConfig) -> tuple[int, int, int] | None:
    """--input as (C, H, W); for synthetic data without a shape, the model's usual input."""
    if cfg.input is not None:
        c, h, w = parse_input_shape(cfg.input)
        return c, h, w
    kind, arg = parse_data_spec(cfg.data)
    if kind == "synthetic" and not (arg or "").partition(":")[0]:
        return default_input_shape(cfg.model)
    return None
