"""Settings of a tiny end-to-end run (seconds on a CPU), shared by the pipeline tests."""

from __future__ import annotations

from typing import Any

TINY_RUN: dict[str, Any] = dict(
    model="demo_cnn",
    data="synthetic:1x16x16:4",
    budgets=("0.5", "0.25"),
    pretrain_epochs=1.0,
    taper_epochs=1.0,
    batch_size=32,
    model_kwargs={"width": 8},
)
# ONNX, latency and the report are tested in test_outputs.py; elsewhere they only cost time.
NO_OUTPUTS: dict[str, Any] = dict(onnx=False, latency_batches=(), report=False)
# A tiny run with a short fine-tune, small data and no outputs: the run-directory tests' run.
FAST_RUN: dict[str, Any] = dict(
    **TINY_RUN,
    **NO_OUTPUTS,
    finetune_epochs=0.5,
    warmup_steps=5,
    train_limit=512,
    test_limit=128,
)
