#!/usr/bin/env bash
# Build a stand-in for the official `python:3.11-slim-bookworm` image from Debian packages, for
# machines that reach Debian's archive but not a Docker registry (the Dockerfiles start FROM it).
#
#   sudo scripts/build-base-image.sh [TAG]        # default TAG: python:3.11-slim-bookworm
#
# What it gives the Dockerfiles, like the official image: Python 3.11 with pip, venv and the C
# headers (sagemaker-training builds a C extension), `python`/`pip` on PATH, pip allowed to install
# system-wide (no EXTERNALLY-MANAGED marker), apt working, LANG=C.UTF-8. Unlike it, Python comes
# from Debian's python3 packages (/usr/bin/python3.11, pip installs under /usr/local) and the
# image carries this host's extra CA certificates (/usr/local/share/ca-certificates/*.crt), so
# that pip inside `docker build` trusts the same TLS proxies the host does.
#
# Needs root, debootstrap and a running Docker daemon. Environment:
#   DEBOOTSTRAP_MIRROR   Debian mirror URL (default: debootstrap's own default)
#   DEBOOTSTRAP_SUITE    Debian suite (default: bookworm)
set -euo pipefail

tag="${1:-python:3.11-slim-bookworm}"
suite="${DEBOOTSTRAP_SUITE:-bookworm}"
mirror="${DEBOOTSTRAP_MIRROR:-}"
packages=python3,python3-venv,python3-pip,python3-dev,ca-certificates

for tool in debootstrap docker; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$0: $tool not found (apt-get install debootstrap docker.io)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "$0: debootstrap needs root: run it with sudo" >&2; exit 1; }

root="$(mktemp -d "${TMPDIR:-/tmp}/python-base.XXXXXX")"
trap 'rm -rf "$root"' EXIT

echo "debootstrap $suite ($packages) into $root ..." >&2
# shellcheck disable=SC2086  # $mirror is empty or one URL
debootstrap --variant=minbase --include="$packages" "$suite" "$root" $mirror >&2

# `python` and `pip` as the official image names them (it has no python3-is-python package).
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
# PEP 668 marker: the official image has none, and the Dockerfiles pip-install system-wide.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED

# This host's extra CA certificates (e.g. a TLS-intercepting proxy's), then the bundle rebuilt.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
chroot "$root" update-ca-certificates >&2

# apt as in the official Debian images: no package cache left behind by an `apt-get install`
# layer, no translations.
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"

# What the official slim image does not ship either: package caches and lists.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/* "$root"/var/tmp/*

echo "docker import -> $tag ..." >&2
tar --numeric-owner --xattrs -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'LABEL org.opencontainers.image.description="stand-in for python:3.11-slim-bookworm, built from Debian packages by scripts/build-base-image.sh"' \
  --change 'CMD ["python3"]' \
  - "$tag" >&2
docker run --rm --network host "$tag" python -c 'import ssl, sys, venv, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"); print(sys.version)' >&2
echo "$tag"
