#!/bin/bash
# The emulated ARM64 environment `verify --arch arm64` runs artifacts in, from Debian's packages and PyPI only,
# into $1 (a cache folder; nothing is installed into the host system):
#   bin/qemu-aarch64   qemu-user 10.x from Debian trixie (a static binary; bookworm's 7.2 segfaults in LiteRT and
#                      computes wrong results with -cpu max)
#   root/              an arm64 trixie root from .debs (python3.13, libstdc++, the EGL/GLES stubs libmediapipe links)
#                      with numpy, ai-edge-litert and mediapipe placed from the host by uv
#   pte/               a torch-free ExecuTorch runner (pte_runner.cpp) linked against the executorch aarch64
#                      wheel's own runtime libraries, cross-compiled with bookworm's g++-12-aarch64-linux-gnu
# Versions come from the environment (LITERT_VERSION, MEDIAPIPE_VERSION, EXECUTORCH_VERSION).
set -euo pipefail
DEST=$(realpath -m "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DEST" && cd "$DEST"
step() { echo "arm64 set-up: $*"; }

apt_config() {  # $1 name, $2 suite, $3 APT::Architecture, $4 architectures
  mkdir -p "apt/$1/lists/partial" "apt/$1/cache/archives/partial" "apt/$1/prefs"
  echo "deb [arch=$4 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $2 main" \
    > "apt/$1/sources.list"
  touch "apt/$1/status"
  cat > "apt/$1/apt.conf" <<CONF
Dir::Etc::SourceList "$DEST/apt/$1/sources.list"; Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::PreferencesParts "$DEST/apt/$1/prefs"; Dir::State::Lists "$DEST/apt/$1/lists";
Dir::State::status "$DEST/apt/$1/status"; Dir::Cache "$DEST/apt/$1/cache";
APT::Architecture "$3"; APT::Architectures { "$3"; };
CONF
  APT_CONFIG="$DEST/apt/$1/apt.conf" apt-get -qq update
}
download() {  # $1 config, $2 folder, rest: packages
  local config=$1 folder=$2; shift 2
  mkdir -p "$folder" && (cd "$folder" && APT_CONFIG="$DEST/apt/$config/apt.conf" apt-get -qq download "$@" 2>&1 \
    | { grep -v unsandboxed || true; })
}

step "Debian package lists (trixie amd64 and arm64, bookworm amd64), private to this folder"
apt_config trixie-amd64 trixie amd64 amd64
apt_config trixie-arm64 trixie arm64 arm64
apt_config bookworm-amd64 bookworm amd64 amd64

step "qemu-aarch64 from trixie's qemu-user"
download trixie-amd64 debs/qemu qemu-user
mkdir -p bin
dpkg-deb --fsys-tarfile debs/qemu/qemu-user_*.deb | tar -x -C bin --strip-components=3 ./usr/bin/qemu-aarch64
bin/qemu-aarch64 --version | head -1

step "arm64 root: python3.13 and its libraries, EGL/GLES stubs"
packages=$(APT_CONFIG="$DEST/apt/trixie-arm64/apt.conf" apt-get install -s --no-install-recommends \
  python3.13-minimal libpython3.13-stdlib libstdc++6 | awk '/^Inst/{print $2}' | grep -vx -e debconf -e tzdata)
# libmediapipe.so links libEGL and libGLESv2 but runs on the CPU: the glvnd stubs suffice (no Mesa).
download trixie-arm64 debs/root $packages libegl1 libgles2 libglvnd0
mkdir -p root
for deb in debs/root/*.deb; do dpkg-deb -x "$deb" root; done
ln -sfn usr/lib root/lib; ln -sfn usr/bin root/bin; ln -sfn usr/sbin root/sbin  # usrmerge, as base-files makes it
ln -sfn python3.13 root/usr/bin/python3
ls debs/root > root/PACKAGES.txt

step "aarch64 wheels (numpy, ai-edge-litert $LITERT_VERSION, mediapipe $MEDIAPIPE_VERSION) placed by uv"
"${PYTHON:-python3}" -m venv tools && tools/bin/pip install -q uv 2>&1 | { grep -v "is ignored" || true; }
site=root/usr/lib/python3/dist-packages
tools/bin/uv pip install -q --python-platform aarch64-manylinux_2_28 --python-version 3.13 --target "$site" \
  numpy "ai-edge-litert==$LITERT_VERSION"
# mediapipe without its vision and audio dependencies (OpenCV, matplotlib): the text task needs none of them.
tools/bin/uv pip install -q --no-deps --python-platform aarch64-manylinux_2_28 --python-version 3.13 \
  --target "$site" "mediapipe==$MEDIAPIPE_VERSION" certifi

step "torch-free ExecuTorch runner (executorch $EXECUTORCH_VERSION aarch64 runtime libraries)"
tools/bin/pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.13 \
  -d debs/wheel "executorch==$EXECUTORCH_VERSION" 2>&1 | { grep -v "is ignored" || true; }
mkdir -p et && "${PYTHON:-python3}" -m zipfile -e debs/wheel/executorch-*.whl et >/dev/null
download bookworm-amd64 debs/cross binutils-aarch64-linux-gnu gcc-12-aarch64-linux-gnu-base cpp-12-aarch64-linux-gnu \
  gcc-12-cross-base libc6-arm64-cross libgcc-s1-arm64-cross libstdc++6-arm64-cross libgcc-12-dev-arm64-cross \
  gcc-12-aarch64-linux-gnu linux-libc-dev-arm64-cross libc6-dev-arm64-cross libstdc++-12-dev-arm64-cross \
  g++-12-aarch64-linux-gnu libatomic1-arm64-cross libgomp1-arm64-cross
mkdir -p cross
for deb in debs/cross/*.deb; do dpkg-deb -x "$deb" cross; done
# The unpacked (not installed) libc.so linker script names absolute paths: make them search-path relative.
sed -i 's|/usr/aarch64-linux-gnu/lib/||g' cross/usr/aarch64-linux-gnu/lib/libc.so
ET="$DEST/et/executorch"
mkdir -p pte/lib
LD_LIBRARY_PATH=cross/usr/lib/x86_64-linux-gnu cross/usr/bin/aarch64-linux-gnu-g++-12 -std=c++17 -O2 \
  -Wno-deprecated-declarations -DC10_USING_CUSTOM_GENERATED_MACROS -DET_EVENT_TRACER_ENABLED \
  -I"$ET/include" -I"$ET/include/executorch/runtime/core/portable_type/c10" "$HERE/pte_runner.cpp" -o pte/pte_runner \
  -L"$ET/lib" -Wl,-rpath-link,cross/usr/aarch64-linux-gnu/lib -Wl,--no-as-needed -lexecutorch_backend_xnnpack \
  -lexecutorch_kernels_optimized -lexecutorch_kernels_quantized -lexecutorch_threadpool -lexecutorch \
  -Wl,--as-needed '-Wl,-rpath,$ORIGIN/lib'
for lib in libexecutorch libexecutorch_backend_xnnpack libexecutorch_kernels_optimized \
           libexecutorch_kernels_quantized libexecutorch_threadpool; do cp "$ET/lib/$lib.so" pte/lib/; done

rm -rf debs cross et tools apt
du -sh bin root pte | tr '\n' ' '; echo
