# bnlab image: API and worker (the command picks which).
#   CPU (default):  docker build -t bnlab .
#   CUDA:           docker build -t bnlab:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   No registry and no PyTorch index (scripts/docker_base_images.sh makes the base and wheels/):
#     docker build -t bnlab --build-arg BASE_IMAGE=bnlab-local/python:3.11-bookworm \
#                           --build-arg TORCH_INDEX=wheels .
# Builds with the classic builder and with BuildKit alike.

# Any Debian-like image whose `python3` is CPython 3.11 with venv.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
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
RUN if [ "$TORCH_INDEX" = wheels ]; then set -- --no-index --find-links /tmp/wheels; \
    else set -- --index-url "$TORCH_INDEX"; fi \
    && pip install "$@" "torch==${TORCH_VERSION}"
# Every other dependency at the version docker/constraints.txt pins, in a layer of its own: a
# change to the sources reinstalls only bnlab itself.
RUN pip install -r /tmp/wheels/constraints.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY config ./config
COPY models ./models
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
# Both distributions in one command (not editable), so the server's bnlab-client requirement
# is met by this checkout's client; anything the constraints do not pin comes from PyPI.
RUN pip install -c /tmp/wheels/constraints.txt ./client . \
    && python -c "import api.main, worker.celery_app, cli.main, bnlab" \
    # tests and C/C++ headers that nothing here runs or compiles against (about 150 MB)
    && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$site"/torch/include "$site"/torch/share/cmake "$site"/torch/test \
       "$site"/*/tests "$site"/scipy/*/tests "$site"/numpy/*/tests "$site"/matplotlib/tests \
       "$site"/pandas/tests "$site"/sympy/*/tests \
    && python -c "import api.main, worker.celery_app, cli.main, bnlab, scipy.stats, torch.onnx"

FROM ${BASE_IMAGE} AS runtime
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
# No EXPOSE and no HEALTHCHECK here: the worker runs this image too and listens on nothing.
# The API listens on 8000 (compose's api service publishes it and checks /readyz).
CMD ["bnlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
