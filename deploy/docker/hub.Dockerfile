# fedinspect hub. Build from the repository root:
#   docker build -f deploy/docker/hub.Dockerfile -t fedinspect-hub .
# Run with the hub folder from `fedinspect ca init` mounted at /etc/fedinspect and a volume for the registry:
#   docker run -v $PWD/plant/hub:/etc/fedinspect:ro -v hubdata:/var/lib/fedinspect --env-file plant/hub/hub.env \
#     -p 127.0.0.1:8090:8090 fedinspect-hub
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/var/lib/fedinspect \
    XDG_CACHE_HOME=/var/lib/fedinspect/cache

RUN groupadd --system --gid 10001 fedinspect \
    && useradd --system --uid 10001 --gid fedinspect --home-dir /var/lib/fedinspect --shell /usr/sbin/nologin fedinspect \
    && install -d -o fedinspect -g fedinspect -m 0750 /var/lib/fedinspect

WORKDIR /opt/fedinspect/src
COPY pyproject.toml README.md ./
COPY fedinspect ./fedinspect
COPY schemas ./schemas
COPY runtime ./runtime
COPY hub ./hub
COPY edge ./edge
COPY exporters ./exporters
COPY deploy ./deploy
# The hub aggregates numpy arrays; the CPU onnxruntime is enough for it.
RUN python -m venv /opt/fedinspect/venv \
    && /opt/fedinspect/venv/bin/pip install --no-cache-dir ".[cpu]"

USER 10001:10001
EXPOSE 8090
VOLUME ["/var/lib/fedinspect"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["/opt/fedinspect/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=4)"]
ENTRYPOINT ["/opt/fedinspect/venv/bin/fedinspect", "hub", "run"]
CMD ["--config", "/etc/fedinspect/hub.yaml"]
