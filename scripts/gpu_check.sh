#!/usr/bin/env bash
# GPU check (for a machine with CUDA; CI never runs it): installs the project without pulling torch (the
# machine's own CUDA build stays), then prints GRPO step time and generation tokens/s on GPU and CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps -e . 2>/dev/null || true
PYTHONPATH="${PYTHONPATH:-}" timeout 480 python3 scripts/gpu_check.py "$@"
