#!/usr/bin/env bash
# Regenerates Sources/MemSnapRemote/Generated from Protos/ (`make proto`). CI never runs this:
# the generated code is committed. Needs protoc (Debian's protobuf-compiler, installed here if
# missing) and builds the two generator plugins from the package's own dependencies (about a
# minute and a half the first time) in a scratch folder of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
  echo "generate-proto: installing protobuf-compiler" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends protobuf-compiler
fi
SCRATCH=.build-proto
swift build --scratch-path "$SCRATCH" --product protoc-gen-swift
swift build --scratch-path "$SCRATCH" --product protoc-gen-grpc-swift-2
BIN=$(swift build --scratch-path "$SCRATCH" --show-bin-path)
OUT=Sources/MemSnapRemote/Generated
rm -rf "$OUT"
mkdir -p "$OUT"
protoc \
  --plugin=protoc-gen-swift="$BIN/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift="$BIN/protoc-gen-grpc-swift-2" \
  --swift_out="$OUT" --swift_opt=Visibility=Package \
  --grpc-swift_out="$OUT" --grpc-swift_opt=Visibility=Package,Client=true,Server=true \
  -I Protos Protos/memsnap/v1/snapshot_service.proto
echo "generate-proto: wrote $(find "$OUT" -name '*.swift' | wc -l) files under $OUT"
