"""Bad settings, data and models end in one line with exit code 2, in seconds, before any
training; short tapers survive skipped steps; files honour the umask; a full disk is named."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from _tiny_run import NO_OUTPUTS, TINY_RUN
from taperprune import files
from taperprune.cli import main
from taperprune.errors import TaperpruneError
from taperprune.run.config import RunConfig
from taperprune.run.data import load_data
from taperprune.run.pipeline import run_prune

MODELS = Path(__file__).parents[1] / "models"
FAST = ["--data", "synthetic:1x16x16:4", "--pretrain-epochs", "0.1", "--train-limit", "64"]
FAST += ["--batch-size", "32"]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    import sys

    old = sys.argv
    sys.argv = ["taperprune", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _one_line_exit_2(code: int, output: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("budgets: null\n", "budgets"),
        ("batch_size: 0\n", "batch_size"),
        ("batch_size: -4\n", "batch_size"),
        ("device: tpu\n", "device"),
        ("seed: -1\n", "seed"),
        ("workers: -1\n", "workers"),
        ("model_kwargs: [1]\n", "model_kwargs"),
        ("image_size: -5\n", "image_size"),
        ("image_size: 0\n", "image_size"),
        ("lr: -0.1\n", "lr"),
        ("lr: .nan\n", "lr"),
        ("tolerance: -1\n", "tolerance"),
        ("tolerance: .nan\n", "tolerance"),
        ("warmup_steps: -5\n", "warmup_steps"),
        ("bn_recalibration_batches: -1\n", "bn_recalibration_batches"),
        ("schedule: adaptve\n", "schedule"),
        ("score: tayler\n", "score"),
        ("price: static_\n", "price"),
        ("budgets: [0.5,\n", ":2:"),  # a YAML syntax error: FILE:LINE:COL
    ],
)
def test_bad_config_file(yaml_text: str, needle: str, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    code, out = _cli(["prune", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    _one_line_exit_2(code, out)
    assert needle in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "synthetic:1x16x16:0"], "≥ 1"),
        (["--data", "synthetic:-1x16x16:4"], "≥ 1"),
        (["--model", f"{MODELS / 'hostile_models.py'}:tuple_output"], "returns a tuple"),
        (["--model", f"{MODELS / 'hostile_models.py'}:raises"], "the builder broke"),
        (["--model", f"{MODELS / 'exits_on_import.py'}:build"], "exited"),
    ],
)
def test_bad_data_or_model(args: list[str], needle: str, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "run"
    code, out = _cli(["prune", *FAST, *args, "--out", str(out_dir)], capsys)
    _one_line_exit_2(code, out)
    assert needle in out
    assert not out_dir.exists()


def test_out_that_cannot_be_a_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "sub", tmp_path / ("x" * 300)):
        code, text = _cli(["prune", *FAST, "--out", str(out)], capsys)
        _one_line_exit_2(code, text)
        assert "choose another --out" in text


def _folder(root: Path, classes: dict[str, int], bad: str | None = None) -> Path:
    for split in ("train", "val"):
        for name, n in classes.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(d / f"{i}.png")
    if bad is not None:
        (root / "train" / bad / "broken.png").write_bytes(b"not a png at all")
    return root


def test_imagefolder_without_classes_or_with_an_empty_class(tmp_path: Path) -> None:
    (tmp_path / "a" / "train").mkdir(parents=True)
    (tmp_path / "a" / "val").mkdir(parents=True)
    with pytest.raises(TaperpruneError, match="class folder"):
        load_data(f"imagefolder:{tmp_path / 'a'}", batch_size=2, image_size=8)
    _folder(tmp_path / "b", {"cat": 3, "dog": 0})
    with pytest.raises(TaperpruneError, match="at least one image"):
        load_data(f"imagefolder:{tmp_path / 'b'}", batch_size=2, image_size=8)


def test_a_corrupt_image_is_named_or_skipped(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", {"cat": 2, "dog": 2}, bad="dog")
    data = load_data(f"imagefolder:{root}", batch_size=5, image_size=8)
    with pytest.raises(TaperpruneError, match=r"broken\.png is not a readable image"):
        list(data.train)
    data = load_data(f"imagefolder:{root}", batch_size=5, image_size=8, skip_bad_images=True)
    (x, _), *_ = list(data.train)
    assert x.shape == (5, 3, 8, 8)
    assert any(p.endswith("broken.png") for p in data.train_set.skipped)  # type: ignore[attr-defined]


def test_skipped_steps_never_break_a_short_tapers_deadline(tmp_path: Path) -> None:
    """2 warm-up + 5 taper steps with 6 NaN steps (under max_bad_steps) still finish."""
    os.environ["TAPERPRUNE_TEST_NAN_STEPS"] = "2,3,5,6,8,9"
    try:
        result = run_prune(
            RunConfig(
                out=str(tmp_path / "run"),
                **{
                    **TINY_RUN,
                    **NO_OUTPUTS,
                    "model": f"{MODELS / 'user_models.py'}:nan_cnn",
                    "model_kwargs": {},
                    "weights": None,
                    "pretrain_epochs": 0.0,
                    "taper_epochs": 5 / 64,  # 64 batches an epoch: 5 taper steps
                    "finetune_epochs": 0.0,
                    "warmup_steps": 2,
                    "checkpoint_every": 0,
                },
            )
        )
    finally:
        os.environ.pop("TAPERPRUNE_TEST_NAN_STEPS")
    assert len(result.snapshots) == 2
    trace = (tmp_path / "run" / "trace.csv").read_text()
    assert trace.count(",skipped,") == 6


def test_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    files._file_mode.cache_clear()
    try:
        files.write_json(tmp_path / "a.json", {"x": 1})
        mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    finally:
        os.umask(old)
        files._file_mode.cache_clear()
    assert mode == 0o640


def test_a_full_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch) -> None:
    def full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", full)
    with pytest.raises(TaperpruneError) as err:
        files.save_weights(tmp_path / "m.safetensors", torch.nn.Linear(2, 2))
    text = str(err.value)
    assert "m.safetensors" in text and "No space left" in text and "free" in text
    assert "\n" not in text
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_one_writer_per_run_directory(tmp_path: Path) -> None:
    from taperprune.run.lock import LOCK_NAME, run_lock

    out = tmp_path / "run"
    out.mkdir()
    refused = pytest.raises(TaperpruneError, match=r"is being written by pid \d+")
    with run_lock(out), refused, run_lock(out):  # the second lock is refused
        pass
    assert not (out / LOCK_NAME).exists()  # released and removed
    with run_lock(out):  # free again
        pass


def test_a_lock_file_that_is_a_link_is_refused_not_truncated(tmp_path: Path) -> None:
    from taperprune.run.lock import LOCK_NAME, run_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(TaperpruneError, match="cannot lock"), run_lock(out):
        pass
    assert victim.read_text() == "keep me"
