"""Shared fixtures: one intra-op thread for the modules that ask for it; hypothesis profiles
"ci" (the default, deterministic) and "thorough".

Pick one with ``HYPOTHESIS_PROFILE=thorough`` or ``--hypothesis-profile=thorough``.
Tests that pass their own ``max_examples`` to ``@settings`` keep it under either profile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the README's test command runs one worker per core) every
    worker and the subprocesses it starts use one intra-op thread: two workers of two
    threads each on two cores oversubscribe them (see `one_thread`)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine's
    oversubscription (measured: 5 s with one thread vs minutes with two under load).

    Opt in per module with `pytestmark = pytest.mark.usefixtures("one_thread")`; not for
    modules that compare an in-process run with a subprocess one (different thread counts
    round differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
