#!/usr/bin/env bash
# ONNX Runtime Web for the offline page (`pipeline export --page`): the npm package
# onnxruntime-web, pinned, its tarball checked against the registry's sha512 integrity recorded
# here, and only the three files the page needs (the wasm-only build, its Emscripten loader and
# its WebAssembly binary; ~15 MB) placed, each sha256-checked, in pipeline/export/web/ort/
# (git-ignored; package data, so a wheel built afterwards carries them). Idempotent: when the
# files are there with the right digests it only checks. Needs npm.
# Usage: bash .ci/fetch-ort-web.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
INTEGRITY=sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw==
DEST=pipeline/export/web/ort
SUMS="b8a78c408c40da65fdc8ba0846f7b2948e92a4c6d6b23cc8e4165e428ad95443  ort.wasm.min.js
30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3  ort-wasm-simd-threaded.mjs
4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d  ort-wasm-simd-threaded.wasm"

if [ -d "$DEST" ] && (cd "$DEST" && echo "$SUMS" | sha256sum -c --status 2>/dev/null) \
    && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "error: npm is needed to fetch onnxruntime-web $VERSION" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null)
tarball="$tmp/onnxruntime-web-$VERSION.tgz"
actual=$(node -e 'const c = require("crypto"), fs = require("fs");
  console.log("sha512-" + c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$tarball")
if [ "$actual" != "$INTEGRITY" ]; then
  echo "error: onnxruntime-web-$VERSION.tgz has integrity $actual, expected $INTEGRITY; nothing installed" >&2
  exit 2
fi
tar -xzf "$tarball" -C "$tmp" package/dist/ort.wasm.min.js package/dist/ort-wasm-simd-threaded.mjs \
  package/dist/ort-wasm-simd-threaded.wasm
(cd "$tmp/package/dist" && echo "$SUMS" | sha256sum -c --quiet)
mkdir -p "$DEST.tmp"
cp "$tmp"/package/dist/* "$DEST.tmp/"
echo "$VERSION" > "$DEST.tmp/VERSION"
chmod 644 "$DEST.tmp"/*
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "installed onnxruntime-web $VERSION in $DEST (integrity and sha256 verified)"
