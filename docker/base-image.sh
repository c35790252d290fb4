#!/usr/bin/env bash
# Builds a stand-in for python:3.11-slim from Debian packages, for engines that reach no
# container registry: debootstrap a minimal bookworm (whose python3 is 3.11), put a virtual
# environment first on PATH (Debian's own pip refuses installs, PEP 668), `docker import` it.
# Usage: docker/base-image.sh [TAG]   (root; needs debootstrap and a running engine)
set -euo pipefail
tag=${1:-local/python:3.11-slim}
suite=bookworm

# the mirror apt already uses here (the only package source the machine may reach)
mirror=$(awk '$1 == "URIs:" {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [[ -z $mirror ]]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /tmp/devchange-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
chroot "$rootfs" python3 -m venv /opt/python
chroot "$rootfs" /opt/python/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "base-image: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
