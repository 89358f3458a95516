"""streamproc: Falco detections on Kafka become expiring Retina observation in Kubernetes.

The package is laid out in the order data flows through it:
events (parse) -> workloads (identify) -> topologies/matching -> ingesting (pre-aggregate)
-> windowing (Faust, window/dedup) -> actions -> annotating (apply) -> expiring.
"""

__version__ = "0.1.0"
