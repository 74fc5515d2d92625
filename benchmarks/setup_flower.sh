#!/usr/bin/env bash
# Creates benchmarks/.venv-flower, the peer framework's own virtual environment.
#
# Flower 1.42 pins its own Ray (2.55.1) while elasticfl runs on a newer Ray, so
# the two cannot share a venv. Idempotent: re-running it only checks that the
# pinned versions are present (pip is a no-op when they are).
#
#   bash benchmarks/setup_flower.sh          # create / refresh
#   benchmarks/.venv-flower/bin/python benchmarks/flower_peer.py --workload W1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${FLOWER_VENV:-$HERE/.venv-flower}"
PYTHON="${PYTHON:-python3}"
FLWR="${FLWR:-flwr[simulation]==1.42.0}"
# Pinned: an unpinned torch pulls a multi-GB CUDA build onto CPU-only machines.
TORCH="${TORCH:-torch==2.13.0}"
STAMP="$VENV/.installed"
WANT="$FLWR $TORCH numpy scikit-learn"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
    && "$VENV/bin/python" -c "import flwr, ray, torch, numpy, sklearn" 2>/dev/null; then
    echo "setup_flower: $VENV up to date ($WANT)"
    exit 0
fi

# torch first and alone, so the resolver never goes looking for a CUDA build.
"$VENV/bin/python" -m pip install --quiet "$TORCH"
"$VENV/bin/python" -m pip install --quiet "$FLWR" "$TORCH" numpy scikit-learn
"$VENV/bin/python" -c "import flwr, ray, torch; print('setup_flower: flwr', flwr.__version__ if hasattr(flwr, '__version__') else '?', 'ray', ray.__version__, 'torch', torch.__version__)"
echo "$WANT" > "$STAMP"
