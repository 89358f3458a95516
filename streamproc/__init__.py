"""streamproc: Falco detections on Kafka become expiring Retina observation in Kubernetes.

The folders follow the flow: ``stages/`` ingest -> windows -> annotate (apply, follow,
expire); ``model/`` the pure domain they share (parse, identify, match, window/dedup,
actions, marks); ``cluster/`` what is known of the cluster; ``clients/`` the only importers
of Kafka, Kubernetes and Prometheus libraries. ``cli``, ``running``, ``doctor/``,
``simulating/`` and ``lab/`` are the entry points.
"""

__version__ = "0.1.0"
