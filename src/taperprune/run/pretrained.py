"""Starting weights: a local file, or a torchvision weights name fetched once into torch's
hub cache (where torchvision itself keeps them, so earlier downloads are reused offline).

Downloads only happen on machines with internet; the file is then read like any local
one (safetensors, or a torch file with ``weights_only=True``; never a pickle).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights, get_weight

from ..errors import TaperpruneError

# "IMAGENET1K_V1", "DEFAULT" or "VGG16_Weights.IMAGENET1K_V1": upper-case enum names.
_NAME = re.compile(r"^([A-Za-z0-9_]+_Weights\.)?[A-Z0-9_]+$")

Download = Callable[[str, str], None]


def is_weights_name(spec: str) -> bool:
    """True for a torchvision weights name (and no file of that name exists here)."""
    return bool(_NAME.match(spec)) and not Path(spec).exists()


def torchvision_weights(spec: str, model: str) -> Any:
    """The torchvision weights enum member `spec` names for `model`."""
    if "." in spec:
        try:
            return get_weight(spec)
        except (ValueError, KeyError, AttributeError) as exc:
            raise TaperpruneError(f"--weights {spec}: not a torchvision weights name") from exc
    try:
        enum = get_model_weights(model)
    except (ValueError, KeyError) as exc:
        raise TaperpruneError(
            f"--weights {spec}: {model!r} has no torchvision weights; pass a file path instead"
        ) from exc
    try:
        return enum[spec]
    except KeyError:
        names = ["DEFAULT", *(w.name for w in enum)]
        raise TaperpruneError(
            f"--weights {spec}: {model} has no such weights; choose from {names} or pass a path"
        ) from None


def cache_path(url: str) -> Path:
    """Where torch's hub (and torchvision) keeps the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch(weights: Any, download: Download | None = None) -> Path:
    """The local file of torchvision `weights`, downloading it once if needed."""
    url = weights.url
    path = cache_path(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        (download or _download)(url, str(partial))
        os.replace(partial, path)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise TaperpruneError(
            f"could not download {weights} from {url} ({exc}). Without internet here, fetch the "
            f"file elsewhere and pass --weights PATH, or put it at {path}"
        ) from exc
    return path


def _download(url: str, dst: str) -> None:
    torch.hub.download_url_to_file(url, dst, progress=True)


def resolve_weights(spec: str, model: str, download: Download | None = None) -> Path:
    """A weights argument (path or torchvision name) → the local file to read."""
    if is_weights_name(spec):
        return fetch(torchvision_weights(spec, model), download)
    return Path(spec)
