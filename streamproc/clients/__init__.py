"""Plumbing: the only importers of aiokafka, kubernetes_asyncio and prometheus_client.

Each third-party client is imported by one module here (import-linter keeps it so), behind
a small interface the stages, the doctor and the lab use.
"""
