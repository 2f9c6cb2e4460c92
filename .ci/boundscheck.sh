#!/usr/bin/env bash
# Build cdeblend with Cython bounds and wraparound checks (meson option `boundscheck`) into a
# separate virtual environment and run the kernel tests (and the fuzz tests) against it.
# An out-of-bounds access in a kernel then raises IndexError in the test that caused it
# instead of reading or writing past a buffer.
#
#   .ci/boundscheck.sh            kernel tests + fuzz tests
#   .ci/boundscheck.sh --all      the whole test suite
#
# Environment: BOUNDSCHECK_VENV (default: a new temporary folder) and PYTHON (default python3).
# The package is installed the README's way (pip, isolated build, the test extra) with the
# meson option switched on; the build goes to build/boundscheck, never the release build.
# .ci/run calls this script after the main test run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${BOUNDSCHECK_VENV:-$(mktemp -d)/venv-boundscheck}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --force-reinstall \
  -Cbuild-dir="$repo/build/boundscheck" -Csetup-args=-Dboundscheck=true "$repo[test]"

# Prove the checks are compiled in: a template row pointing past the end of the flat buffer
# must raise IndexError (a release build would read out of bounds).
"$venv/bin/python" - <<'PY'
import numpy as np
from cdeblend import _apportion_cy
flat = np.zeros(4)
offsets = np.array([10], dtype=np.int64)         # past the end of `flat`
boxes = np.array([[0, 0, 2, 2]], dtype=np.int64)
mask = np.ones((2, 2), dtype=np.uint8)
tsum = np.zeros((1, 2, 2))
try:
    _apportion_cy.template_sum(flat, offsets, boxes, mask, tsum)
except IndexError as exc:
    print(f"boundscheck build confirmed (IndexError: {exc})")
else:
    raise SystemExit("the kernels were built WITHOUT bounds checks")
PY

if [ "${1:-}" = "--all" ]; then
  tests=("$repo/tests")
else
  tests=()
  for t in adam apportion convolve fft nnls monotonic_radial monotonic_shadow symmetric spectra \
           observation blend initialization deblender single_band single_band_stray \
           detection model_data geometry fallback fuzz_multi fuzz_single fuzz_catalog \
           fuzz_files; do
    tests+=("$repo/tests/test_$t.py")
  done
fi
# run from outside the source tree so that the installed (checked) build is imported
cd "$(mktemp -d)"
"$venv/bin/python" -c "import cdeblend, sys; print('testing', cdeblend.__file__)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
