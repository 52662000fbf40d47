# storecast: ONE image for the predictor, the transformer and the retrain service.
#
# The entrypoint (docker/entrypoint.sh) picks the component by its first argument:
#
#   predictor   [flags]  python -m predictor            KServe ModelServer: HTTP 8080, gRPC 8081
#   transformer [flags]  python -m transformer          business API (V1 + CloudEvents), HTTP 8080, gRPC 8081
#   retrain     [flags]  python -m pipelines.retrain    CloudEvents at POST /, GET /healthz (--port 8080)
#   storecast   [args]   the CLI: data synth, train, export, serve, forecast, ...
#   mlflow      [args]   the MLflow CLI, e.g. `mlflow server ...` (the tracking server of manifests/base)
#   deadletter  [flags]  logs dead-lettered CloudEvents as JSON lines (the Broker's dead-letter sink)
#   anything else        exec'd as given (e.g. `bash`); no argument prints this list
#
#   podman build -t localhost/storecast:dev .                     # or: docker build
#   podman run --rm localhost/storecast:dev predictor --help
#   podman run -d -p 127.0.0.1:8080:8080 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#       localhost/storecast:dev predictor --model_uri models:/storecast/1
#
# Two stages: the builder makes a venv with the project wheel and every dependency pinned
# (pyproject.toml pins the direct ones, docker/constraints.txt all of them, transitive included;
# refresh it with `make image-lock`); the final stage copies only that venv onto the slim base and
# runs as an unprivileged user. No compiler, no pip cache, no sales data (.dockerignore allowlist).

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/docker/constraints.txt \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or the
# constraints change, not on every source edit (empty packages and README stand in for the real
# ones). The test suites of the big scientific packages are never imported at run time (~130 MB).
COPY pyproject.toml ./
COPY docker/constraints.txt docker/constraints.txt
RUN mkdir predictor transformer pipelines \
    && touch README.md predictor/__init__.py transformer/__init__.py pipelines/__init__.py \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall -y storecast \
    && cd /opt/venv/lib/python3*/site-packages \
    && find pandas numpy scipy matplotlib pyarrow sklearn -depth -type d -name tests -exec rm -rf {} +

# The project itself, built as a wheel and installed without touching the pinned dependencies.
COPY README.md ./
COPY predictor/ predictor/
COPY transformer/ transformer/
COPY pipelines/ pipelines/
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-deps /tmp/wheels/storecast-*.whl \
    && /opt/venv/bin/pip check

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG UID=10001
LABEL org.opencontainers.image.title="storecast" \
      org.opencontainers.image.description="Per-store sales forecasts: KServe predictor, transformer, retrain service" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric non-root user (Kubernetes' runAsNonRoot can verify a numeric USER).
RUN groupadd --gid ${UID} storecast \
    && useradd --uid ${UID} --gid ${UID} --home-dir /home/storecast --create-home --shell /usr/sbin/nologin \
       storecast

COPY --from=builder /opt/venv /opt/venv
COPY docker/entrypoint.sh docker/deadletter.py /opt/storecast/

ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    GIT_PYTHON_REFRESH=quiet

USER ${UID}:${UID}
WORKDIR /home/storecast
# KServe's ports: HTTP (REST V1/V2, CloudEvents) and gRPC (Open Inference Protocol V2).
EXPOSE 8080 8081
ENTRYPOINT ["/bin/sh", "/opt/storecast/entrypoint.sh"]
CMD []
