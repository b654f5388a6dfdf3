"""Everything a run checks and builds before it trains: device, data, model, weights,
budgets, channel graph (built once, shared by the checks, the base plan and the pruner)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, TaperpruneError
from ..files import load_weights
from ..graph import ChannelGraph, build_graph
from ..models import build_model
from ..pruner import check_budgets
from . import distributed as ddp
from .config import RunConfig
from .data import BatchStream, DataBundle, load_data
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
    model = _build(cfg.model, kwargs)
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
    _check_output(model, example, cfg.model, data.num_classes)
    graph = build_graph(model, example, exclude=cfg.exclude)
    budgets = check_budgets(model, example, list(cfg.budgets), exclude=cfg.exclude, graph=graph)
    return Prepared(device, data, stream, model, example, kwargs, graph, budgets)


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model, or one line saying why the builder failed (its own error, not ours)."""
    try:
        model = build_model(name, **kwargs)
    except TaperpruneError:
        raise
    except (Exception, SystemExit) as exc:  # a user's builder or module can raise anything
        what = "exited" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}"
        raise ModelError(
            f"building model {name} with {sorted(kwargs)} {what}: {exc}. A builder is called "
            "as builder(num_classes=…, in_channels=…, **model_kwargs); accept the arguments "
            "it is given (e.g. with **kwargs)"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name} built a {type(model).__name__}, not a torch nn.Module")
    return model


def _check_output(model: nn.Module, example: torch.Tensor, name: str, classes: int) -> None:
    """The model must map a batch to one tensor of class scores (N, classes)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        raise ModelError(
            f"model {name} cannot run on an input of shape {tuple(example.shape)}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"model {name} returns a {type(out).__name__}, not one tensor of class scores; "
            "wrap it so that forward returns the logits (e.g. out[0] or out.logits)"
        )
    if out.ndim != 2 or out.shape[1] != classes:
        raise ModelError(
            f"model {name} returns shape {tuple(out.shape)} for a batch of 1; the data has "
            f"{classes} classes, so (1, {classes}) is expected"
        )
