#!/usr/bin/env bash
# Cross-check the RecordIO reader and writer against real MXNet 1.9.1, installed in its own virtualenv
# (MXNet needs numpy < 1.24, so it cannot live beside the project). Skipped, not failed, only when MXNet
# cannot be installed (no network); a failing comparison fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MXNET_VENV:-/tmp/arcface-bridge-mxnet}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import mxnet" 2>/dev/null; then
  rm -rf "$VENV"
  if ! { "$PYTHON" -m venv "$VENV" \
         && "$VENV/bin/pip" install -q "numpy==1.23.5" requests \
         && "$VENV/bin/pip" install -q --no-deps "mxnet==1.9.1"; } >/dev/null 2>&1; then
    echo "mxnet-check: MXNet 1.9.1 could not be installed here; cross-check skipped"
    rm -rf "$VENV"
    exit 0
  fi
fi
ARCFACE_MXNET_PYTHON="$VENV/bin/python" exec "$PYTHON" -m pytest -q train/tests/test_recordio_mxnet.py
