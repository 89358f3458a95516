"""The domain without I/O: detections, workloads, topologies and the decisions on them.

Pure functions and frozen records: events (parse), workloads (identify), topologies and
matching, tallies, qualifying and escalation (window/dedup), actions, the marks streamproc
writes on pods (patches, ownership, conventions). Nothing here talks to Kafka or Kubernetes.
"""
