"""The original project's daily story in accelerated time (pure: no I/O, no clock).

True conversion rates per arm by simulated hour of day, the same numbers as
``scenarios/daily_story.json``: 9 AM blue 15 % / green 10 % / red 8 %; 2 PM blue 8 %,
red 18 %; 6 PM (and overnight until 9 AM) green 20 %, red back to 10 %.
"""

from __future__ import annotations

from typing import Final

ARMS: Final = ("blue-button", "green-button", "red-button")

#: (start hour, rates in ARMS order), sorted; the last segment wraps past midnight.
SEGMENTS: Final[tuple[tuple[float, tuple[float, float, float]], ...]] = (
    (9.0, (0.15, 0.10, 0.08)),
    (14.0, (0.08, 0.10, 0.18)),
    (18.0, (0.08, 0.20, 0.10)),
)


def sim_hour(elapsed_s: float, seconds_per_day: float, start_hour: float) -> float:
    """Simulated hour of day (0 <= h < 24) after ``elapsed_s`` real seconds."""
    return (start_hour + elapsed_s * 24.0 / seconds_per_day) % 24.0


def rates_at(hour: float) -> dict[str, float]:
    """True conversion rate of each arm at simulated ``hour``."""
    current = SEGMENTS[-1][1]  # before 9 AM: still last evening's segment
    for start, rates in SEGMENTS:
        if hour >= start:
            current = rates
    return dict(zip(ARMS, current, strict=True))


def best_arm(hour: float) -> str:
    rates = rates_at(hour)
    return max(rates, key=lambda a: rates[a])
