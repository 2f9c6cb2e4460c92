"""Settings shared by the whole suite.

Hypothesis draws its examples from a fixed seed (``derandomize``), so the suite tests the same
cases on every run and every machine: a property test cannot pass on one run and fail on the
next. ``CDEBLEND_HYPOTHESIS_PROFILE=hunt`` draws fresh random examples, many more of them, to
look for new failures (then add what it finds as a regular test).

The fuzz tests' shared strategies (damaged scenes, layouts, PSFs, peaks) and checks live in
``tests/fuzz_helpers.py``, a plain module: Hypothesis strategies feed ``@given``, which pytest
fixtures cannot, and ``test_fuzz_files.py`` also runs as a script without pytest. Its ``FUZZ``
settings take their deadline and health checks from the profile loaded here.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("hunt", derandomize=False, max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("CDEBLEND_HYPOTHESIS_PROFILE", "default"))
