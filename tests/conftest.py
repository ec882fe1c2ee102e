"""Settings for the whole test tree."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, settings

# Hypothesis's default deadline (200 ms per example) is a wall-clock window: on a busy
# 2-core machine (CI, sipgw's worker processes, other tests) a descheduled moment fails a
# correct example. Ten times that still catches an input that sends a parser into a
# blow-up (what the deadline is for here); the number and kind of examples are unchanged.
# too_slow judges how fast the strategies generate, which is not what these tests test.
settings.register_profile(
    "busy-machine",
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("busy-machine")
