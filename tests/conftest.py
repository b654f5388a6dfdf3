"""Hypothesis profiles: "ci" (the default, deterministic) and "thorough".

Pick one with ``HYPOTHESIS_PROFILE=thorough`` or ``--hypothesis-profile=thorough``.
Tests that pass their own ``max_examples`` to ``@settings`` keep it under either profile.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
