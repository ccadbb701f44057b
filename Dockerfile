# syntax=docker/dockerfile:1
# bnlab image: API and worker (the command picks which).
#   CPU (default):  docker build -t bnlab .
#   CUDA:           docker build -t bnlab:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU or CUDA index: the project's torch range is then already met and
# pip never pulls the default (CUDA) wheel from PyPI.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY models ./models
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY client ./client
COPY migrations ./migrations
RUN pip install . && python -c "import api.main, worker.celery_app, cli.main"

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --create-home --uid 10001 bnlab \
    && mkdir -p /data /tmp/matplotlib \
    && chown bnlab:bnlab /data /tmp/matplotlib
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    BNLAB_HOME=/data
USER bnlab
WORKDIR /home/bnlab
EXPOSE 8000
# No image-wide HEALTHCHECK: workers share this image; compose checks the API's /healthz.
CMD ["bnlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
