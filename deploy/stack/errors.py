"""The local stack's one exception.

Every module of :mod:`deploy.stack` raises it for a failure a person can fix (a port in
use, a missing ``java``, a broker that would not start), with the fix in the message;
``mab up`` prints it as one line and exits 1 instead of showing a traceback.
"""

from __future__ import annotations


class StackError(RuntimeError):
    """One clear, user-facing failure of the local stack (the CLI prints it and exits 1)."""
