"""Settings for the whole test tree."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, settings
from twisted.logger import globalLogBeginner

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

# Twisted keeps every log event in a buffer until logging begins (sipgw serve begins it at
# once). In-process tests never begin it, so the buffer kept the objects its events name —
# whole services of earlier tests — alive, and let go of them when newer events pushed the
# oldest out: at random, in the middle of the tests that count what the cyclic collector
# finds. Observers added later (capturedLogs) still see every event.
globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
