"""Process plumbing shared by the stream processors (reward consumer, projector).

Services never import each other; what they share beyond ``schemas`` and
``bandit_core`` is this infrastructure: structured logs and a clean, signal-driven life.
"""
