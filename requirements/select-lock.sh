#!/bin/sh
# Make DIR/lock.txt the lock resolved for the Python running this script: lock.txt as it is for
# Python 3.11, lock-py312.txt for 3.12. Both Dockerfiles run it, so an image built with
# PYTHON_VERSION=3.12 installs the 3.12 pins. Prints the lock chosen.
set -eu
dir="${1:?usage: select-lock.sh DIR (holding lock.txt and lock-py312.txt)}"
version="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$version" in
  3.11) chosen=lock.txt ;;
  3.12) chosen=lock-py312.txt ;;
  *) echo "no lock for Python $version: build with PYTHON_VERSION=3.11 or 3.12" >&2; exit 1 ;;
esac
if [ "$chosen" != lock.txt ]; then
  mv "$dir/$chosen" "$dir/lock.txt"
fi
rm -f "$dir"/lock-py*.txt
echo "Python $version: requirements/$chosen"
