#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with pinned versions.
#
#   bash tools/setup_env.sh            # -> .venv/ in the repository root
#
# Idempotent: a second run checks what is installed and only installs what is
# missing; the mmcv wheel (compiled ops, ~7 min to build on 2 cores) is cached in
# $SSLKIT_CACHE (default ~/.cache/sslkit) and never rebuilt once there.
# Environment:
#   SSLKIT_VENV    where the venv lives           (default: <repo>/.venv)
#   SSLKIT_CACHE   where built wheels are cached  (default: ~/.cache/sslkit)
#   SSLKIT_PYTHON  interpreter to create it with  (default: python3.11, else python3)
#   SSLKIT_DETECTRON2  also install detectron2 (on no package registry), from
#                  a folder holding a detectron2-*.whl built for this Python and torch, or
#                  "git": from its repository (needs network access to it and a compiler);
#                  unset: detectron2 is left out and its tests skip, saying how to install it
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSLKIT_VENV:-$ROOT/.venv}"
CACHE="${SSLKIT_CACHE:-$HOME/.cache/sslkit}"
STAMP="$VENV/.sslkit-installed"

TORCH_PIN="torch==2.9.1 torchvision==0.24.1"
MMCV_VERSION="2.1.0"

step() { CURRENT_STEP="$1"; echo "[setup_env] $1"; }
trap 'echo "[setup_env] FAILED at step: ${CURRENT_STEP:-start} (see the output above)" >&2' ERR

# The stamp records the hash of every input that decides what is installed, so
# an unchanged environment is verified in a second instead of re-resolved.
D2_SOURCE="${SSLKIT_DETECTRON2:-}"
D2_WHEEL=""
if [[ -n "$D2_SOURCE" && "$D2_SOURCE" != "git" ]]; then
  D2_WHEEL="$(ls "$D2_SOURCE"/detectron2-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$D2_WHEEL" ]]; then
    echo "[setup_env] FAILED at step: detectron2: SSLKIT_DETECTRON2=$D2_SOURCE holds no detectron2-*.whl" \
         "(give a folder with a wheel built for Python 3.11 and torch 2.9.1, or 'git')" >&2
    exit 1
  fi
fi

inputs_hash() {
  { cat "$ROOT/requirements.txt" "$ROOT/requirements-detectron2.txt" "$ROOT/setup.py" "$ROOT/tools/setup_env.sh"
    echo "detectron2: ${D2_SOURCE:+${D2_WHEEL:-git}}"; } | sha256sum | cut -d' ' -f1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(inputs_hash)" && -x "$VENV/bin/python" ]]; then
  echo "[setup_env] $VENV is up to date"
  exit 0
fi

step "python interpreter"
PY="${SSLKIT_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
fi
"$PY" - <<'EOF'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"Python 3.11 is required (found {sys.version.split()[0]}); set SSLKIT_PYTHON")
EOF

step "virtual environment at $VENV"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24" "setuptools<70" wheel

have() {  # have DIST VERSION -> true when that exact version is installed
  [[ "$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" == "$2" ]]
}

step "torch and torchvision ($TORCH_PIN)"
if ! have torch 2.9.1 || ! have torchvision 0.24.1; then
  # On x86-64, PyPI serves the CUDA build (several GB); it runs on CPU too.
  "${PIP[@]}" install $TORCH_PIN
fi

step "mmcv $MMCV_VERSION with compiled ops (cached wheel in $CACHE)"
if ! have mmcv "$MMCV_VERSION"; then
  mkdir -p "$CACHE/wheels"
  WHEEL="$(ls "$CACHE"/wheels/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$WHEEL" ]]; then
    echo "[setup_env] building mmcv $MMCV_VERSION from its sdist (about 7 minutes on 2 cores)"
    # mmcv's setup.py imports torch and pkg_resources: build without isolation,
    # against the pinned torch and setuptools<70. CPU ops only unless FORCE_CUDA=1.
    BUILD_DIR="$(mktemp -d)"
    MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary mmcv \
      "mmcv==$MMCV_VERSION" -w "$BUILD_DIR"
    mv "$BUILD_DIR"/mmcv-"$MMCV_VERSION"-*.whl "$CACHE/wheels/"
    rm -rf "$BUILD_DIR"
    WHEEL="$(ls "$CACHE"/wheels/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
  fi
  "${PIP[@]}" install --no-deps "$WHEEL"
fi

step "pinned Python dependencies (requirements.txt)"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt"

if [[ -n "$D2_SOURCE" ]]; then
  step "detectron2 (from ${D2_WHEEL:-its git repository})"
  # Its other needs come from the registry, pinned (requirements-detectron2.txt); the pins of
  # requirements.txt hold (omegaconf, iopath, fvcore are versions detectron2 accepts).
  "${PIP[@]}" install -q -r "$ROOT/requirements-detectron2.txt" -c "$ROOT/requirements.txt"
  # LVIS's and Cityscapes' own evaluations (the lvis and cityscapes_instance rungs), without their declared
  # dependencies: what the evaluations import is installed already (numpy, matplotlib, opencv, pillow), and
  # cityscapesscripts would add the 'typing' backport and its viewer / download tools' packages.
  "${PIP[@]}" install -q --no-deps lvis==0.5.3 cityscapesscripts==2.3.0 pyquaternion==0.9.9
  if [[ -n "$D2_WHEEL" ]]; then
    "${PIP[@]}" install -q --no-deps --force-reinstall "$D2_WHEEL"
  elif ! have detectron2 0.6; then
    "${PIP[@]}" install -q --no-deps --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
  fi
fi

step "the project (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

step "import check"
"$VENV/bin/python" - <<'EOF'
import torch, torchvision, timm, mmengine, mmseg, pretrain, transfer
from mmcv.ops import roi_align  # the compiled ops mmseg needs
assert torch.__version__.startswith("2.9.1"), torch.__version__
print(f"[setup_env] torch {torch.__version__}, mmcv ops OK, mmseg {mmseg.__version__}")
EOF
if [[ -n "$D2_SOURCE" ]]; then
  "$VENV/bin/python" - <<'EOF'
import detectron2, detectron2._C  # the compiled ops: fail here if built against another torch
import lvis, cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling  # LVIS's, Cityscapes' evaluations
from detectron2.modeling.backbone import ViT  # noqa: F401
print(f"[setup_env] detectron2 {detectron2.__version__} with its compiled ops")
EOF
fi

inputs_hash > "$STAMP"
echo "[setup_env] ready: $VENV"
