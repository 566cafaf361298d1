#!/bin/sh
# Regenerate the Python gRPC/protobuf modules in snapshotter/proto/ (dev-only; the output is committed).
#
# Needs grpcio-tools, kept out of the runtime venv (it pins its own protobuf):
#   python3 -m venv /tmp/zsnap-protogen && /tmp/zsnap-protogen/bin/pip install grpcio-tools
#   PYTHON=/tmp/zsnap-protogen/bin/python scripts/gen-proto.sh
# Run from anywhere; paths are relative to the repository root so that generated imports read
# ``from snapshotter.proto import mount_pb2``.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m grpc_tools.protoc -I . \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    snapshotter/proto/mount.proto snapshotter/proto/snapshots.proto snapshotter/proto/cri.proto
