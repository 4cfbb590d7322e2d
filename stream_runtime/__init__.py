"""Process plumbing shared by the stream processors (reward consumer, projector).

Services never import each other; what they share beyond ``schemas`` and
``bandit_core`` is this infrastructure: structured logs and a clean, signal-driven life
(:mod:`~stream_runtime.process`), the Kafka poll -> write -> commit loop with its
exactly-once ordering (:mod:`~stream_runtime.kafka_loop`), the pure per-batch helpers
(:mod:`~stream_runtime.batch`) and the common settings fields
(:mod:`~stream_runtime.settings`).
"""
