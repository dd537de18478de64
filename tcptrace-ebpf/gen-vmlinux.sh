#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only OR MIT
# Regenerates src/bpf/vmlinux.h from a kernel's BTF. The vendored header keeps the
# build independent of the build host's kernel; CO-RE relocates every field access
# against the running kernel's BTF at load time, so any recent kernel works.
#   usage: ./gen-vmlinux.sh [path-to-btf]   (default /sys/kernel/btf/vmlinux)
set -eu
btf=${1:-/sys/kernel/btf/vmlinux}
out=$(dirname "$0")/src/bpf/vmlinux.h
bpftool btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out from $btf ($(uname -r))"
