"""The three stages, in the order data flows: ingest -> windows -> annotate.

They never import each other: they meet only through Kafka topics and the cluster.
"""
