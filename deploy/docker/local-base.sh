#!/usr/bin/env bash
# For machines that reach Debian's package mirror but not Docker Hub (air-gapped registries,
# build farms): makes the Dockerfile's base images, debian:12 and debian:12-slim, locally with
# debootstrap (Debian 12 "bookworm", minbase variant) and `docker import`. Docker Hub's images are
# made the same way; this one is a little smaller than debian:12 and larger than debian:12-slim,
# and lists only the main archive in its apt sources.
#
#   sudo deploy/docker/local-base.sh [MIRROR]      (default http://deb.debian.org/debian)
#
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker daemon.
set -euo pipefail
mirror="${1:-http://deb.debian.org/debian}"
command -v debootstrap >/dev/null || { echo "local-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "local-base: needs a running Docker daemon" >&2; exit 1; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror"
tar -C "$root" -c . | docker import - debian:12
docker tag debian:12 debian:12-slim
docker images debian
