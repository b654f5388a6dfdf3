"""Data sets read from files the tests write: IDX, CIFAR-10 binary, ImageFolder, synthetic."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from taperprune.errors import DataError
from taperprune.run.data import FASHION_MNIST_DIR, fashion_mnist_available, load_data, read_idx


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def make_fmnist(d: Path, n_train: int = 300, n_test: int = 40, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    train_x = rng.integers(0, 256, (n_train, 28, 28))
    train_x[0, 0, 0] = 255
    write_idx(d / "train-images-idx3-ubyte", train_x, compress=compress)
    write_idx(d / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train), compress=compress)
    write_idx(
        d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress=compress
    )
    write_idx(d / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test), compress=compress)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx(tmp_path: Path, compress: bool) -> None:
    make_fmnist(tmp_path, compress=compress)
    data = load_data(f"fashion-mnist:{tmp_path}", batch_size=64, train_limit=None)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert len(data.train.dataset) == 300 and len(data.test.dataset) == 40
    x, y = next(iter(data.test))
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    full = data.train.dataset.tensors[0]  # type: ignore[attr-defined]
    assert full[0, 0, 0, 0].item() == pytest.approx((1 - 0.2860) / 0.3530, rel=1e-5)


def test_corrupt_and_truncated_idx_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x09\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad.*magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 5)
    with pytest.raises(DataError, match="short.*truncated"):
        read_idx(short)
    make_fmnist(tmp_path / "fm")
    f = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_data(f"fashion-mnist:{tmp_path / 'fm'}")


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data(f"fashion-mnist:{tmp_path}")


def make_cifar(d: Path, n: int = 10) -> None:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (n, 3073)).astype(np.uint8)
        rec[:, 0] = rng.integers(0, 10, n)
        (d / name).write_bytes(rec.tobytes())


def test_cifar10_binary(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar-10-batches-bin")
    data = load_data(f"cifar10:{tmp_path}", batch_size=16)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.train.dataset) == 50 and len(data.test.dataset) == 10
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 32, 32) and int(y.max()) < 10


def test_cifar10_missing_batch_is_named(tmp_path: Path) -> None:
    make_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin"):
        load_data(f"cifar10:{tmp_path / 'c'}")
    (tmp_path / "c" / "data_batch_3.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="data_batch_3.bin is truncated"):
        load_data(f"cifar10:{tmp_path / 'c'}")


def make_imagefolder(d: Path, classes: list[str], val_classes: list[str] | None = None) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for c in names:
            (d / split / c).mkdir(parents=True)
            for i in range(3):
                img = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
                Image.fromarray(img).save(d / split / c / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, ["cat", "dog", "eel"])
    data = load_data(f"imagefolder:{tmp_path}", batch_size=4, image_size=32)
    assert data.num_classes == 3 and data.input_shape == (3, 32, 32)
    x, y = next(iter(data.train))
    assert x.shape == (4, 3, 32, 32)
    xv, _ = next(iter(data.test))
    assert xv.shape[1:] == (3, 32, 32)


def test_a_test_limit_on_an_image_folder_keeps_every_class(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, ["cat", "dog", "eel"])  # listed class by class
    for seed in (0, 1):
        data = load_data(
            f"imagefolder:{tmp_path}", batch_size=2, image_size=32, test_limit=3, seed=seed
        )
        labels = sorted(int(y) for _, y in data.test.dataset)
        assert labels == [0, 1, 2]  # not the first three, all cats


def test_imagefolder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train"):
        load_data(f"imagefolder:{tmp_path}")
    make_imagefolder(tmp_path / "x", ["cat", "dog"], val_classes=["cat", "emu"])
    with pytest.raises(DataError, match="class folders differ"):
        load_data(f"imagefolder:{tmp_path / 'x'}", batch_size=2)


def test_synthetic_is_seeded_and_shaped() -> None:
    a = next(iter(load_data("synthetic:3x8x8:5", batch_size=32, seed=1).train))
    b = next(iter(load_data("synthetic:3x8x8:5", batch_size=32, seed=1).train))
    c = next(iter(load_data("synthetic:3x8x8:5", batch_size=32, seed=2).train))
    assert a[0].shape == (32, 3, 8, 8) and int(a[1].max()) < 5
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_synthetic_is_learnable() -> None:
    torch.manual_seed(0)
    data = load_data("synthetic:1x8x8:4", batch_size=64, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data.train:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = next(iter(data.test))
    acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.6  # chance is 0.25


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("mnist", "unknown data set"), ("cifar10", "needs a path"), ("synthetic:3x8", "CxHxW:K")],
)
def test_bad_specs(spec: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        load_data(spec)


def test_fewer_examples_than_a_batch() -> None:
    with pytest.raises(DataError, match="fewer than one batch"):
        load_data("synthetic", batch_size=64, train_limit=10)


@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist absent")
def test_the_real_fashion_mnist_files() -> None:
    assert read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    data = load_data("fashion-mnist", batch_size=128, train_limit=256, test_limit=100)
    assert len(data.train.dataset) == 256 and len(data.test.dataset) == 100
