#!/usr/bin/env bash
# Build a local stand-in for the official python:3.11-slim image, for machines that cannot pull from
# Docker Hub, under a tag of its own: build on it with `--build-arg PYTHON_IMAGE=<tag>`. (Tagged
# python:3.11-slim it would shadow the official image on this machine.) Debian bookworm ships CPython 3.11, like the official image; a virtual environment at
# /usr/local gives the same layout (/usr/local/bin/python, /usr/local/bin/pip, site-packages under
# /usr/local/lib/python3.11) without fighting Debian's externally-managed system Python.
#
#   scripts/container_base.sh [IMAGE_TAG]   (default glimpse-python-standin:3.11-bookworm; needs root
#                                            and debootstrap)
set -euo pipefail

tag="${1:-glimpse-python-standin:3.11-bookworm}"
if [[ "$tag" == python:* || "$tag" == */python:* ]]; then
    echo "container_base.sh: refusing to tag a stand-in as $tag, which would shadow the official image" >&2
    exit 2
fi
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d /var/tmp/glimpse-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

chroot "$rootfs" python3 -m venv /usr/local
chroot "$rootfs" ln -sf /usr/local/bin/pip /usr/local/bin/pip3
# Keep the image slim: no package caches, docs or man pages (as the official slim variant).
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*

python_version="$(chroot "$rootfs" /usr/local/bin/python -c 'import platform; print(platform.python_version())')"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$python_version" \
    --change 'CMD ["python3"]' \
    --message "local debootstrap stand-in for python:3.11-slim (bookworm, Python $python_version)" \
    - "$tag" >/dev/null
echo "built $tag from Debian bookworm (Python $python_version)"
