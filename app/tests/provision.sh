#!/bin/sh
# The system packages the tests run with (Debian): a C++ compiler (the CUDA kernel under the
# models' CPU emulator), FFmpeg, Xvfb + Mesa's software
# Vulkan + xdotool for real windows and input, the X11 client libraries winit loads, and OpenBLAS
# (optional at run time; the models' CPU products are about 2x faster with it), and Python's venv for
# the export tests' readers (pycolmap, trimesh, plyfile from PyPI). The tests call this
# before they need them: it does nothing when everything is installed, and otherwise installs what
# is missing (as root, or through `sudo -n`), one test process at a time.
set -eu
packages="g++ ffmpeg xvfb xdotool mesa-vulkan-drivers libvulkan1 libx11-6 libxcursor1 libxrandr2 libxi6 libxkbcommon-x11-0 libopenblas0 python3-venv"
missing() {
    out=""
    for p in $packages; do
        dpkg -s "$p" >/dev/null 2>&1 || out="$out $p"
    done
    echo "$out"
}
if ! command -v dpkg >/dev/null 2>&1; then
    for t in ffmpeg ffprobe Xvfb xdotool; do
        command -v "$t" >/dev/null 2>&1 || { echo "not Debian: install $t (and Mesa's Vulkan drivers) for the video and GUI tests" >&2; exit 1; }
    done
    exit 0
fi
[ -z "$(missing)" ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "the video and GUI tests need:$(missing); run: sudo apt-get install -y --no-install-recommends$(missing)" >&2
    exit 1
fi
lock="${TMPDIR:-/tmp}/spatial-viewer-test-packages.lock"
exec 9>"$lock"
flock 9
todo="$(missing)"
[ -z "$todo" ] && exit 0
echo "installing for the tests:$todo" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $todo >&2
