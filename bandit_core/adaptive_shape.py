"""The sizes of the adaptive summaries every :class:`bandit_core.state.ArmStats` carries.

They live apart from the algorithms of :mod:`bandit_core.adaptive` because the state's
snapshot layout is sized by them (the state imports them) while the algorithms work on
the state (they import it): one module each way, no import circle. Changing a size
changes the snapshot layout, so it needs a replay.
"""

from __future__ import annotations

from typing import Final

#: Half-lives of the decayed sums (time units), geometric with ratio 4 (16 steps .. 3 days);
#: the ratio 4 is relied on by :func:`observe` (rung factors are successive 4th powers).
HALF_LIVES: Final[tuple[float, ...]] = (
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
)
#: Buckets of the sliding-window summary (each ``WINDOW_BUCKET`` time units wide).
WINDOW_BUCKETS: Final = 16
#: Buckets of the daypart summary: hours of the UTC day.
DAYPART_BUCKETS: Final = 24
