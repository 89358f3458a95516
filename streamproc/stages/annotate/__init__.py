"""Stage 3: apply actions to pods, follow new pods, expire observations.

``loop`` is the Kafka loop (consume, commit, retry); ``applying`` applies one action;
``following`` gives new pods of an observed workload the same observation; ``expiring``
removes observations when they end; ``capturing``, ``node_budget`` and ``auditing`` serve
them.
"""
