# fedinspect edge agent on NVIDIA GPUs (CUDA 12 + cuDNN 9 runtime, what onnxruntime-gpu 1.2x uses).
# Build from the repository root:
#   docker build -f deploy/docker/edge.Dockerfile -t fedinspect-edge .
# Run with the edge folder from `fedinspect enroll` at /etc/fedinspect, a data volume, and the GPU:
#   docker run --gpus all -v $PWD/plant/edges/line-3:/etc/fedinspect:ro -v edgedata:/var/lib/fedinspect \
#     --env-file plant/edges/line-3/edge.env fedinspect-edge
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/var/lib/fedinspect \
    XDG_CACHE_HOME=/var/lib/fedinspect/cache \
    YOLO_CONFIG_DIR=/var/lib/fedinspect/ultralytics \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=false

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.12.* python3-venv=3.12.* libgl1=1.7.* libglib2.0-0t64=2.80.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fedinspect \
    && useradd --system --uid 10001 --gid fedinspect --groups video --home-dir /var/lib/fedinspect --shell /usr/sbin/nologin fedinspect \
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
RUN python3 -m venv /opt/fedinspect/venv \
    && /opt/fedinspect/venv/bin/pip install --no-cache-dir ".[gpu]"

USER 10001:10001
EXPOSE 8080
VOLUME ["/var/lib/fedinspect"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["/opt/fedinspect/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["/opt/fedinspect/venv/bin/fedinspect", "edge", "run"]
CMD ["--config", "/etc/fedinspect/edge.yaml"]
