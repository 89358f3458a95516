# streamproc: one image for every stage (`streamproc ingest|windows|annotate|run|send`).
# Everything is installed at build time; nothing is fetched when the container runs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamproc ./streamproc
COPY topologies ./topologies
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin streamproc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
COPY topologies /etc/streamproc/topologies
ENV STREAMPROC_TOPOLOGY=/etc/streamproc/topologies \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 9108
ENTRYPOINT ["streamproc"]
CMD ["run"]
