# bnlab image: API and worker (the command picks which).
#   CPU (default):  docker build -t bnlab .
#   CUDA:           docker build -t bnlab:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   No registry and no PyTorch index (scripts/docker_base_images.sh makes the base and wheels/):
#     docker build -t bnlab --build-arg BASE_IMAGE=bnlab-local/python:3.11-bookworm \
#                           --build-arg TORCH_INDEX=wheels .
# Builds with the classic builder and with BuildKit alike.

# Any Debian-like image whose `python3` is CPython 3.11 with venv.
ARG BASE_IMAGE=python:3.11-slim

# --- deps: the virtual environment with torch and every pinned dependency. It changes only with
# TORCH_INDEX, TORCH_VERSION or docker/constraints.txt, so the image's big layer (about 1.1 GB)
# is the same from one source change to the next.
FROM ${BASE_IMAGE} AS deps
# A PyTorch wheel index (CPU or a CUDA one), or `wheels`: torch and its dependencies from the
# wheels/ folder of the build context, with no index at all.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# `wheel[s]` copies wheels/ when it exists (it is git-ignored) and nothing otherwise; COPY
# needs one source that always exists, hence the constraints file beside it.
COPY docker/constraints.txt wheel[s] /tmp/wheels/
# torch first, from its own index: the project's torch range is then already met and pip never
# pulls the default (CUDA) wheel from PyPI.
# Each install skips pip's one-file-at-a-time bytecode compile and drops tests and C/C++
# headers that nothing here runs or compiles against (about 100 MB); compileall then compiles
# what is new on every core (up-to-date .pyc are kept): half the install time on 2 cores.
RUN if [ "$TORCH_INDEX" = wheels ]; then set -- --no-index --find-links /tmp/wheels; \
    else set -- --index-url "$TORCH_INDEX"; fi \
    && pip install --no-compile "$@" "torch==${TORCH_VERSION}" \
    && site=/opt/venv/lib/python3.*/site-packages \
    && rm -rf $site/torch/include $site/torch/share/cmake $site/torch/test \
    && (python -m compileall -q -j0 /opt/venv/lib >/dev/null || true)
# Every other dependency at the version docker/constraints.txt pins.
RUN pip install --no-compile -r /tmp/wheels/constraints.txt \
    && site=/opt/venv/lib/python3.*/site-packages \
    && rm -rf $site/*/tests $site/*/*/tests \
    && (python -m compileall -q -j0 /opt/venv/lib >/dev/null || true)

# --- the image: deps' environment, then bnlab itself on top (a layer of a few MB).
FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 bnlab \
    && mkdir -p /data /tmp/matplotlib \
    && chown bnlab:bnlab /data /tmp/matplotlib
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/constraints.txt pyproject.toml README.md /tmp/src/
COPY client /tmp/src/client
COPY config /tmp/src/config
COPY models /tmp/src/models
COPY api /tmp/src/api
COPY worker /tmp/src/worker
COPY cli /tmp/src/cli
COPY migrations /tmp/src/migrations
# Both distributions in one command (not editable), so the server's bnlab-client requirement
# is met by this checkout's client; a dependency the constraints do not pin comes from PyPI.
RUN pip install --no-compile -c /tmp/src/constraints.txt /tmp/src/client /tmp/src \
    && rm -rf /tmp/src \
    && (python -m compileall -q -j0 /opt/venv/lib >/dev/null || true) \
    && python -c "import api.main, worker.celery_app, cli.main, bnlab, scipy.stats, torch.onnx"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    BNLAB_HOME=/data
USER bnlab
WORKDIR /home/bnlab
# No EXPOSE and no HEALTHCHECK here: the worker runs this image too and listens on nothing.
# The API listens on 8000 (compose's api service publishes it and checks /readyz).
CMD ["bnlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
