#!/usr/bin/env bash
# tests/gpu/carry-libs.sh — for a GPU machine that has CUDA but not the Debian
# packages ppd links against (libjansson, libuv, libmicrohttpd, pcre2 and what
# they pull in), and no way to install them: copy those shared libraries of
# build/ppd into build/gpu/syslib (ignored), to carry with the binaries built
# here.  There, tests/gpu/run.sh (PPD_GPU_NO_BUILD=1) puts on the library path
# only those the machine lacks.  The CUDA libraries and libc are left out: the
# GPU machine's own must serve (same CUDA major version as here).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x build/ppd ] || { echo "carry-libs: build/ppd missing (make all)" >&2; exit 1; }
rm -rf build/gpu/syslib && mkdir -p build/gpu/syslib
ldd build/ppd | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    case $name in
        libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libstdc++.so*|libgcc_s.so*|ld-linux*|libcu*) continue ;;
    esac
    cp -L "$path" "build/gpu/syslib/$name"
done
ls -l build/gpu/syslib | tail -n +2
du -sh build/gpu/syslib
