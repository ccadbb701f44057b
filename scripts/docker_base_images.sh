#!/usr/bin/env bash
# Local stand-ins for the images bnlab's compose file pulls, for machines that reach no image
# registry, and torch's wheels in wheels/ for machines that reach no PyTorch index:
#
#   bnlab-local/debian:bookworm      debootstrap --variant=minbase, `docker import`ed
#   bnlab-local/python:3.11-bookworm for python:3.11-slim   (docker/base/python.Dockerfile)
#   bnlab-local/redis:7              for redis:7            (docker/redis/, Debian's 7.0)
#   bnlab-local/postgres:15          for postgres:16        (docker/postgres/, Debian's 15)
#   wheels/                          torch==$BNLAB_TORCH_VERSION and its dependencies (pip download)
#
# then:  docker-compose -f docker-compose.yml -f docker/compose.local.yml up -d
#
# Needs root, a Docker engine (DOCKER_HOST; scripts/dockerd_up.sh starts one), debootstrap
# (installed with apt when missing) and the Debian mirror of this machine's apt sources
# (BNLAB_DEBIAN_MIRROR overrides). The TLS CA files of /usr/local/share/ca-certificates go into
# the base (a proxy that re-signs TLS then works for pip and apt inside builds), and the image
# sets SSL_CERT_FILE and PIP_CERT to the system bundle.
#
# Cached under $BNLAB_DOCKER_CACHE (default /var/cache/bnlab-docker): the rootfs tarball and the
# wheels. An image whose bnlab.inputs label matches what it would be built from is kept, so a
# second run takes seconds. BNLAB_REBUILD=1 rebuilds the images; BNLAB_SKIP_WHEELS=1 skips
# wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${BNLAB_DOCKER_CACHE:-/var/cache/bnlab-docker}"
SUITE=bookworm
DEBIAN_TAG="${BNLAB_DEBIAN_IMAGE:-bnlab-local/debian:bookworm}"
PYTHON_TAG="${BNLAB_PYTHON_IMAGE:-bnlab-local/python:3.11-bookworm}"
REDIS_TAG="${BNLAB_REDIS_IMAGE:-bnlab-local/redis:7}"
POSTGRES_TAG="${BNLAB_POSTGRES_IMAGE:-bnlab-local/postgres:15}"
TORCH_VERSION="${BNLAB_TORCH_VERSION:-2.13.0}"
# netbase and tzdata as in python:3.11-slim; apt's https transport is built in since apt 1.5.
PACKAGES="ca-certificates,netbase,tzdata"
# Bump when the rootfs recipe below changes (it is part of the cache key).
RECIPE=1

t0=$SECONDS
say() { printf 'docker_base_images: [%3ds] %s\n' "$((SECONDS - t0))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); eval \"\$(scripts/dockerd_up.sh)\" first"

label_of() { docker image inspect -f '{{ index .Config.Labels "bnlab.inputs" }}' "$1" 2>/dev/null || true; }

# The Debian mirror: the first deb822 or one-line source for the suite on this machine.
mirror() {
    if [ -n "${BNLAB_DEBIAN_MIRROR:-}" ]; then echo "$BNLAB_DEBIAN_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri="$(awk -v s="$SUITE" '
            /^[[:space:]]*$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
            END { if (u != "" && ok) print u }' "$f" | head -n1)"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    uri="$(awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2; exit }' \
        /etc/apt/sources.list 2>/dev/null || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

# --- 1. bnlab-local/debian:bookworm ------------------------------------------------------------
MIRROR="$(mirror)"
CA_FILES=(/usr/local/share/ca-certificates/*.crt)
[ -e "${CA_FILES[0]}" ] || CA_FILES=()
KEY="$( { echo "recipe=$RECIPE suite=$SUITE mirror=$MIRROR packages=$PACKAGES"
          [ ${#CA_FILES[@]} -gt 0 ] && cat "${CA_FILES[@]}"; true; } | sha256sum | cut -c1-16)"
TARBALL="$CACHE/rootfs/$SUITE-minbase-$KEY.tar"

if [ "${BNLAB_REBUILD:-0}" != 1 ] && [ "$(label_of "$DEBIAN_TAG")" = "$KEY" ]; then
    say "$DEBIAN_TAG is current (inputs $KEY)"
else
    if [ ! -s "$TARBALL" ]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            say "installing debootstrap (apt)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                debootstrap >/dev/null
        fi
        mkdir -p "$CACHE/rootfs"
        ROOTFS="$(mktemp -d "$CACHE/rootfs/build.XXXXXX")"
        trap 'umount -R "$ROOTFS/proc" "$ROOTFS/sys" 2>/dev/null || true; rm -rf --one-file-system "$ROOTFS"' EXIT
        say "debootstrap $SUITE minbase from $MIRROR (about 2 min)"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
            >"$CACHE/rootfs/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/rootfs/debootstrap.log" >&2; die "debootstrap failed"; }
        if [ ${#CA_FILES[@]} -gt 0 ]; then
            say "adding ${#CA_FILES[@]} CA file(s) from /usr/local/share/ca-certificates"
            cp "${CA_FILES[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
        fi
        chroot "$ROOTFS" update-ca-certificates >"$CACHE/rootfs/update-ca.log" 2>&1 \
            || { cat "$CACHE/rootfs/update-ca.log" >&2; die "update-ca-certificates failed"; }
        for ca in "${CA_FILES[@]}"; do  # each one in the bundle that SSL_CERT_FILE names
            line="$(sed -n 2p "$ca")"
            grep -qF "$line" "$ROOTFS/etc/ssl/certs/ca-certificates.crt" || die "$ca not in the bundle"
        done
        # apt as in Debian's own images: no caches or translations kept; docs and man pages
        # left out of later installs (as python:*-slim).
        cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
EOF
        cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
        # The suite, its updates and its security archive, from the same mirror host.
        sec="${MIRROR%/debian}/debian-security"
        [ "$sec" != "$MIRROR/debian-security" ] || sec=http://deb.debian.org/debian-security
        cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $sec
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        rm -f "$ROOTFS/etc/apt/sources.list"
        rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/*.log \
            "$ROOTFS"/usr/share/doc/*/changelog* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
            "$ROOTFS"/tmp/* "$ROOTFS"/etc/resolv.conf "$ROOTFS"/etc/hostname
        find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias \
            -exec rm -rf {} + 2>/dev/null || true
        say "packing the rootfs into $TARBALL"
        tar --numeric-owner --xattrs -C "$ROOTFS" \
            --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
            -cf "$TARBALL.part" .
        mv "$TARBALL.part" "$TARBALL"
        rm -rf --one-file-system "$ROOTFS"
        trap - EXIT
    else
        say "rootfs from the cache: $TARBALL"
    fi
    say "docker import -> $DEBIAN_TAG"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL bnlab.inputs=$KEY" \
        --change 'CMD ["bash"]' \
        "$TARBALL" "$DEBIAN_TAG" >/dev/null
fi
DEBIAN_ID="$(docker image inspect -f '{{.Id}}' "$DEBIAN_TAG")"

# --- 2. python, redis, postgres on top ---------------------------------------------------------
# Each is rebuilt when its files or the base changed (the label holds both digests).
build() {  # tag context dockerfile
    local tag="$1" ctx="$2" file="$3" key
    key="$( { echo "$DEBIAN_ID"; cat "$file"; find "$ctx" -maxdepth 1 -type f ! -name '*.md' \
              -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -c1-16)"
    if [ "${BNLAB_REBUILD:-0}" != 1 ] && [ "$(label_of "$tag")" = "$key" ]; then
        say "$tag is current (inputs $key)"
        return
    fi
    say "building $tag ($file)"
    # --network host: apt in the build goes out the way this machine's apt does.
    DOCKER_BUILDKIT=0 docker build --network host --pull=false \
        --build-arg "BASE_IMAGE=$DEBIAN_TAG" --label "bnlab.inputs=$key" \
        -f "$file" -t "$tag" "$ctx" >"$CACHE/build-${tag//[\/:]/_}.log" 2>&1 \
        || { tail -n 30 "$CACHE/build-${tag//[\/:]/_}.log" >&2; die "docker build of $tag failed"; }
}
build "$PYTHON_TAG" docker/base docker/base/python.Dockerfile
build "$REDIS_TAG" docker/redis docker/redis/Dockerfile
build "$POSTGRES_TAG" docker/postgres docker/postgres/Dockerfile

# --- 3. wheels/ --------------------------------------------------------------------------------
if [ "${BNLAB_SKIP_WHEELS:-0}" != 1 ]; then
    WCACHE="$CACHE/wheels/torch-$TORCH_VERSION"
    if [ ! -e "$WCACHE/.complete" ]; then
        say "pip download torch==$TORCH_VERSION and its dependencies -> $WCACHE"
        mkdir -p "$WCACHE"
        # The image's interpreter, whatever runs this script: CPython 3.11 on manylinux x86_64.
        # pip's own configuration (index, find-links) decides where torch comes from; on a
        # machine with the CPU index, BNLAB_TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
        # shellcheck disable=SC2086
        python3 -m pip download -q --disable-pip-version-check "torch==$TORCH_VERSION" \
            --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
            --platform manylinux_2_28_x86_64 ${BNLAB_TORCH_PIP_ARGS:-} -d "$WCACHE" 2>&1 \
            | { grep -v -E "^WARNING: Location .* is ignored" || true; } >&2
        if ls "$WCACHE" | grep -q '^nvidia'; then
            say "warning: that is the CUDA build of torch (nvidia-* wheels, several GB)"
        fi
        touch "$WCACHE/.complete"
    fi
    mkdir -p wheels
    # Only what the build should see: torch of this version and its dependencies.
    find wheels -maxdepth 1 -name '*.whl' -delete
    cp -l "$WCACHE"/*.whl wheels/ 2>/dev/null || cp "$WCACHE"/*.whl wheels/
    say "wheels/: $(ls wheels/*.whl | wc -l) wheels, $(du -sh wheels | cut -f1) (git-ignored)"
fi

say "done: $DEBIAN_TAG $PYTHON_TAG $REDIS_TAG $POSTGRES_TAG"
