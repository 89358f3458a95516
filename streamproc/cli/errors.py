"""The failures a person can act on, each as one plain line naming the cause and the fix."""

from __future__ import annotations

import errno

from streamproc.clients import kafka


def explain(exc: BaseException) -> str | None:
    """One line naming the cause and the fix, for every failure a person can act on."""
    from streamproc.clients import kube, prometheus  # noqa: PLC0415 - only needed when something failed
    from streamproc.model import evidence, seals  # noqa: PLC0415 - only needed when something failed
    from streamproc.stages import windows as windowing  # noqa: PLC0415 - only needed when something failed

    if isinstance(exc, windowing.StageCrashed | seals.BadKeys):
        return str(exc)
    if isinstance(exc, kube.KubeError):
        return kube.explain(exc)
    if isinstance(exc, prometheus.PrometheusError | evidence.BadAnswer):
        return f"Prometheus: {exc}; check --prometheus-url and that it answers"
    if isinstance(exc, kafka.KafkaError):
        return kafka.explain(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror}: another process holds the port; choose another --metrics-port"
    return None
