"""The lab's own infrastructure: an embedded Kafka-protocol broker and an emulated API server.

Tests use exactly these, so what the lab shows is what the tests check.
"""
