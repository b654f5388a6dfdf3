"""Model builders by name: built-in nets, the torchvision zoo, and `file.py:function`:
`build_model` for names the user types, `plan_builder` for names read from a plan."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError, TaperpruneError
from .small_nets import mobilenet_small, vgg_small


class UntrustedModelFile(ModelError):
    """A model name read from a file is a Python file, and running it was not allowed."""

    def __init__(self, spec: str) -> None:
        self.file = spec.rsplit(":", 1)[0]
        super().__init__(f"model {spec!r} is the Python file {self.file!r}")


class BuilderArgumentError(ModelError):
    """A builder argument read from a file that is refused; `field`: where, as a path of
    keys and list indices."""

    def __init__(self, field: tuple[str | int, ...], problem: str) -> None:
        super().__init__(f"{'.'.join(map(str, field))}: {problem}")
        self.field = field
        self.problem = problem


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def demo_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Module:
    """The demo net: 4 conv-BN-ReLU layers (32-64-128-128), 14.7 M MACs on 1x28x28."""
    w = width
    return nn.Sequential(
        *_conv_bn(in_channels, w),
        nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w),
        nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w),
        *_conv_bn(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, 6n+2 layers) with 1x1-conv shortcuts."""

    def __init__(
        self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-20 for 32x32 (or 28x28) inputs, 16-32-64 channels."""
    return ResNetCifar(20, num_classes, in_channels)


def alexnet_bvlc(num_classes: int = 1000, in_channels: int = 3, lrn: bool = False) -> nn.Module:
    """BVLC (Caffe) AlexNet: 96-256-384-384-256, conv2/4/5 with groups=2, for 227x227 inputs.

    0.724 GMAC at 227 px. LRN is off by default: it normalises across neighbouring
    channels, so removing a channel changes its neighbours and pruning cannot be exact
    (with lrn=True the first two conv groups are kept whole).
    """

    def lrn_layer() -> list[nn.Module]:
        return [nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)] if lrn else []

    features = nn.Sequential(
        nn.Conv2d(in_channels, 96, 11, stride=4),
        nn.ReLU(inplace=True),
        *lrn_layer(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(inplace=True),
        *lrn_layer(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(4096, num_classes),
    )
    return nn.Sequential(features, classifier)


BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "demo_cnn": demo_cnn,
    "resnet20": resnet20,
    "alexnet_bvlc": alexnet_bvlc,
    "mobilenet_small": mobilenet_small,
    "vgg_small": vgg_small,
}
DEFAULT_INPUT: dict[str, tuple[int, int, int]] = {
    "demo_cnn": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "alexnet_bvlc": (3, 227, 227),
    "mobilenet_small": (3, 32, 32),
    "vgg_small": (3, 32, 32),
}


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


# What every builder is offered; a builder gets each only where its signature names it.
STANDARD_ARGS = ("num_classes", "in_channels")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by built-in name, torchvision name, or `path/to/file.py:function`.

    The builder contract: `num_classes` and `in_channels` (the data's) are passed only to a
    builder whose signature names them — `**kwargs` alone does not ask for them; any other
    argument (a run's `model_kwargs`) is passed as given and must be accepted. Whatever the
    builder raises is one `ModelError` line naming the builder and its arguments.
    """
    if is_file_spec(name):
        fn = _load_user_builder(name)
    elif name in BUILTIN:
        fn = BUILTIN[name]
    else:
        import torchvision

        if name not in _torchvision_names():
            raise _unknown_model(name)

        def fn(**kw: Any) -> nn.Module:
            return torchvision.models.get_model(name, weights=None, **kw)

        if kwargs.get("in_channels", 3) != 3:
            raise ModelError(
                f"torchvision model {name!r} takes 3 input channels, not "
                f"{kwargs['in_channels']}; use data with 3 channels."
            )
        kwargs = {k: v for k, v in kwargs.items() if k != "in_channels"}
        if name in ("googlenet", "inception_v3"):
            # Auxiliary heads return a tuple in training and are never traced (torch-pruning
            # traces in eval mode), so their input channels would not be pruned with the rest.
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", False)
        return _call_builder(name, fn, kwargs)
    return _call_builder(name, fn, _accepted(name, fn, kwargs))


def _accepted(name: str, fn: Callable[..., nn.Module], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments `fn` takes: standard ones where named, others as given (checked)."""
    params = inspect.signature(fn).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    out = {k: v for k, v in kwargs.items() if k not in STANDARD_ARGS or k in named}
    refused = sorted(k for k in out if k not in named and not takes_any)
    if refused:
        raise ModelError(
            f"builder {name!r} takes no argument {', '.join(refused)} (it takes: "
            f"{', '.join(sorted(named)) or 'none'}); remove it from model_kwargs"
        )
    return out


def _call_builder(name: str, fn: Callable[..., nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    """fn(**kwargs); anything it raises (a user's code can raise anything) is one line."""
    try:
        model = fn(**kwargs)
    except TaperpruneError:
        raise
    except (Exception, SystemExit) as exc:
        what = "exited" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}"
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise ModelError(
            f"building model {name} with {given} {what}: {' '.join(str(exc).split())}. "
            "A builder receives num_classes / in_channels only where its signature names "
            "them, and model_kwargs as given (README: your own model)"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"builder {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def is_file_spec(name: str) -> bool:
    return ":" in name and name.split(":", 1)[0].endswith(".py")


def canonical_name(name: str) -> str:
    """The model name to store in a plan: a file spec gets its absolute path."""
    if not is_file_spec(name):
        return name
    path_s, fn_name = name.rsplit(":", 1)
    return f"{Path(path_s).resolve()}:{fn_name}"


def _load_user_builder(spec: str) -> Callable[..., nn.Module]:
    path_s, fn_name = spec.rsplit(":", 1)
    path = Path(path_s)
    if not path.is_file():
        raise ModelError(f"model file {path_s!r} does not exist (spec {spec!r})")
    mod_name = f"taperprune_user_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelError(f"cannot import {path_s!r} as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        what = "exited" if isinstance(exc, SystemExit) else f"failed: {type(exc).__name__}"
        raise ModelError(f"importing model file {path_s!r} {what}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelError(f"{path_s!r} has no function {fn_name!r} (spec {spec!r})")
    return fn


def _unknown_model(name: str) -> ModelError:
    choices = ", ".join(list(BUILTIN) + ["any torchvision model (e.g. resnet18, vgg16)"])
    return ModelError(
        f"unknown model {name!r}; use one of: {choices}, or path/to/file.py:function."
    )


# Arguments every caller passes (see `build_model`): dropped where a builder does not take
# them, as `build_model` drops them. Names that could fetch weights or read files: refused.
def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape a model is usually run at (C, H, W)."""
    return DEFAULT_INPUT.get(name, (3, 224, 224))


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'3x224x224' -> (3, 224, 224)."""
    try:
        dims = tuple(int(t) for t in text.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise ModelError(f"input shape {text!r} is not of the form CxHxW, e.g. 3x224x224")
    return dims
