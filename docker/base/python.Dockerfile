# A local stand-in for python:3.11-slim (scripts/docker_base_images.sh): Debian bookworm's
# Python 3.11 with venv, on the debootstrapped base. `python`, `python3` and `python3 -m venv`
# work as in the official image.
ARG BASE_IMAGE=bnlab-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 \
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
