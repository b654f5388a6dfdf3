"""Built-in data sets: Fashion-MNIST (Debian's files), CIFAR-10 binary, ImageFolder, synthetic."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import DataError
from .synthetic import synthetic_sets

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SPEC_FORMS = "fashion-mnist[:DIR], cifar10:DIR, imagefolder:DIR, synthetic[:CxHxW:K]"


@dataclass(frozen=True)
class DataBundle:
    train: DataLoader
    test: DataLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    train_set: Dataset | None = None  # what `BatchStream` draws from
    workers: int = 0
    pin_memory: bool = False


class BatchStream:
    """The training batches of a run as one endless, resumable sequence.

    Epoch e is a permutation seeded by (seed, e), cut into global batches of
    `batch_size` (the last partial one dropped). With `world` > 1 processes, rank r takes
    its share (`batch_size // world` examples) of every global batch, so the processes
    together see exactly the batches a single process would. The position (epoch, batch)
    is all a checkpoint needs to continue the sequence bit for bit.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size % world:
            raise DataError(
                f"batch size {batch_size} must be divisible by the number of processes {world}"
            )
        self.dataset = dataset
        self.n = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world = rank, world
        self.workers, self.pin_memory = workers, pin_memory
        self.epoch = 0
        self.index = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size

    def _index_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**64)
        order = torch.randperm(self.n, generator=g)
        per_rank = self.batch_size // self.world
        lo = self.rank * per_rank
        return [
            order[b * self.batch_size + lo : b * self.batch_size + lo + per_rank].tolist()
            for b in range(self.index, len(self))
        ]

    def batches(self, steps: int) -> Iterator[Any]:
        """The next `steps` batches (x, y), crossing epochs as needed."""
        done = 0
        while done < steps:
            if self.index >= len(self):
                self.epoch, self.index = self.epoch + 1, 0
            loader = DataLoader(
                self.dataset,
                batch_sampler=self._index_batches(),
                num_workers=self.workers,
                pin_memory=self.pin_memory,
            )
            for batch in loader:
                self.index += 1
                done += 1
                yield batch
                if done >= steps:
                    return

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """'cifar10:/data' -> ('cifar10', '/data'); unknown kinds are an error."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in ("fashion-mnist", "cifar10", "imagefolder", "synthetic"):
        raise DataError(f"unknown data set {spec!r}; use one of: {SPEC_FORMS}")
    if kind in ("cifar10", "imagefolder") and not arg:
        raise DataError(f"data set {kind} needs a path: {kind}:/path/to/data")
    return kind, arg or None


def fashion_mnist_available(directory: Path = FASHION_MNIST_DIR) -> bool:
    return all(_find_idx(directory, f) is not None for f in _FMNIST_FILES.values())


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array; corrupt files name themselves."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is corrupted or truncated ({exc})") from exc
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(raw) != header + size:
        raise DataError(
            f"{path} is truncated or corrupted: header says {dims} ({size} bytes), "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_mnist(
    directory: Path,
) -> tuple[TensorDataset, TensorDataset, int, tuple[int, int, int]]:
    paths = {k: _find_idx(directory, f) for k, f in _FMNIST_FILES.items()}
    missing = [_FMNIST_FILES[k] + ".gz" for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST files missing in {directory}: {', '.join(missing)}. Install them with "
            "`sudo apt-get install dataset-fashion-mnist`, or pass fashion-mnist:/dir holding "
            "the four IDX files (train-images-idx3-ubyte.gz, ...)"
        )
    arrays = {k: read_idx(p) for k, p in paths.items() if p is not None}

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
        return (x - 0.2860) / 0.3530

    train = TensorDataset(
        images(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64))
    )
    test = TensorDataset(
        images(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64))
    )
    return train, test, 10, (1, 28, 28)


def _cifar10(directory: Path) -> tuple[TensorDataset, TensorDataset, int, tuple[int, int, int]]:
    if (directory / "cifar-10-batches-bin").is_dir():
        directory = directory / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 binary files missing in {directory}: {', '.join(missing)}; expected the "
            "binary version (cifar-10-batches-bin/data_batch_1.bin ... test_batch.bin)"
        )

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        raw = np.fromfile(directory / name, dtype=np.uint8)
        if raw.size % 3073:
            raise DataError(f"{directory / name} is truncated: {raw.size} bytes is not n·3073")
        rec = raw.reshape(-1, 3073)
        x = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
        std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
        return (x - mean) / std, torch.from_numpy(rec[:, 0].astype(np.int64))

    parts = [read(n) for n in names[:5]]
    train = TensorDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = TensorDataset(*read(names[5]))
    return train, test, 10, (3, 32, 32)


def _image_folder(directory: Path, transform: Any, skip_bad: bool) -> Any:
    folder = _checked_image_folder_class()
    try:
        return folder(str(directory), transform=transform, skip_bad=skip_bad)
    except FileNotFoundError as exc:  # no class folder, or a class folder without images
        raise DataError(
            f"{directory}: {exc}; imagefolder:DIR expects DIR/train/<class>/*.jpg and "
            "DIR/val/<class>/*.jpg, with at least one image in every class folder"
        ) from None


@functools.cache
def _checked_image_folder_class() -> type:
    """Built on first use: torchvision is imported only when an image folder is read."""
    from torchvision import datasets

    class CheckedImageFolder(datasets.ImageFolder):
        """An ImageFolder whose unreadable image is named (or, with `skip_bad`, replaced by
        the next readable one of the data set and counted in `skipped`)."""

        def __init__(self, root: str, *, transform: Any, skip_bad: bool) -> None:
            super().__init__(root, transform=transform)
            self.skip_bad = skip_bad
            self.skipped: set[str] = set()

        def __getitem__(self, index: int) -> Any:
            for attempt in range(len(self.samples)):
                i = (index + attempt) % len(self.samples)
                try:
                    return super().__getitem__(i)
                except (OSError, ValueError) as exc:  # PIL: truncated or not an image
                    path = self.samples[i][0]
                    if not self.skip_bad:
                        raise DataError(
                            f"{path} is not a readable image ({exc}); remove it, or set "
                            "skip_bad_images: true to train without it"
                        ) from None
                    self.skipped.add(path)
            raise DataError(f"{self.root}: no image in it can be read")

    return CheckedImageFolder


def _imagefolder(
    directory: Path, size: int, skip_bad: bool = False
) -> tuple[Dataset, Dataset, int, tuple[int, int, int]]:
    from torchvision import transforms

    for sub in ("train", "val"):
        if not (directory / sub).is_dir():
            raise DataError(
                f"{directory / sub} is missing; imagefolder:DIR expects DIR/train/<class>/*.jpg "
                "and DIR/val/<class>/*.jpg"
            )
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(int(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            norm,
        ]
    )
    train = _image_folder(directory / "train", train_tf, skip_bad)
    val = _image_folder(directory / "val", val_tf, skip_bad)
    if train.classes != val.classes:
        raise DataError(
            f"class folders differ between {directory / 'train'} and {directory / 'val'}: "
            f"{train.classes[:5]}... vs {val.classes[:5]}..."
        )
    return train, val, len(train.classes), (3, size, size)


def _crop_from_input(shape: tuple[int, int, int], image_size: int | None) -> int:
    """imagefolder's crop size from --input (3xSxS); it must agree with --image-size."""
    c, h, w = shape
    if c != 3 or h != w:
        raise DataError(
            f"imagefolder gives square RGB crops; --input must be 3xSxS, got {c}x{h}x{w}"
        )
    if image_size is not None and image_size != h:
        raise DataError(f"--input {c}x{h}x{w} and --image-size {image_size} disagree; give one")
    return h


def _limit(ds: Dataset, n: int | None, seed: int, shuffle: bool) -> Dataset:
    """`n` examples: a seeded random draw, or (not shuffled: the test set) `n` evenly
    spaced ones, the same for every seed. Not the first `n`: an image folder lists its
    examples class by class, so those would all be of one class."""
    size: int = len(ds)  # type: ignore[arg-type]
    if n is None or n >= size:
        return ds
    idx = (
        torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
        if shuffle
        else torch.arange(n) * size // n
    )
    return torch.utils.data.Subset(ds, idx.tolist())


def load_data(
    spec: str,
    *,
    batch_size: int = 128,
    seed: int = 0,
    workers: int = 0,
    image_size: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    pin_memory: bool = False,
    skip_bad_images: bool = False,
    input_shape: tuple[int, int, int] | None = None,
) -> DataBundle:
    """Train and test loaders for a data spec (see SPEC_FORMS). `input_shape` (C, H, W) is
    synthetic data's shape where the spec has none and imagefolder's crop; it must match
    the images of the fixed-size sets."""
    kind, arg = parse_data_spec(spec)
    train: Dataset
    test: Dataset
    if kind == "imagefolder" and input_shape is not None:
        image_size = _crop_from_input(input_shape, image_size)
    if kind == "fashion-mnist":
        train, test, k, shape = _fashion_mnist(Path(arg) if arg else FASHION_MNIST_DIR)
    elif kind == "cifar10":
        train, test, k, shape = _cifar10(Path(arg or ""))
    elif kind == "imagefolder":
        train, test, k, shape = _imagefolder(Path(arg or ""), image_size or 224, skip_bad_images)
    else:
        train, test, k, shape = synthetic_sets(arg, seed, input_shape)
    if input_shape is not None and tuple(input_shape) != shape:
        given = "x".join(map(str, input_shape))
        raise DataError(
            f"--input {given} does not match data set {spec}, whose examples are "
            f"{'x'.join(map(str, shape))}; drop --input or use other data"
        )
    train = _limit(train, train_limit, seed, shuffle=True)
    test = _limit(test, test_limit, seed, shuffle=False)
    n_train = len(train)  # type: ignore[arg-type]
    if n_train < batch_size:
        raise DataError(
            f"{spec}: {n_train} training examples are fewer than one batch ({batch_size})"
        )
    persistent = workers > 0
    return DataBundle(
        train=DataLoader(
            train,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=persistent,
        ),
        test=DataLoader(
            test,
            batch_size=max(batch_size, 256),
            shuffle=False,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=persistent,
        ),
        num_classes=k,
        input_shape=shape,
        name=spec,
        train_set=train,
        workers=workers,
        pin_memory=pin_memory,
    )
