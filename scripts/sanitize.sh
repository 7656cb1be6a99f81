#!/usr/bin/env bash
# Builds the CPU extension with AddressSanitizer and UndefinedBehaviorSanitizer into build/asan
# (the in-tree build, anacuda/_C*.so, is left alone) and runs the op tests against it. Fails on
# any sanitizer report, on a test failure, or on a crash.
#
#   scripts/sanitize.sh                 # build (incrementally) and run the default subset
#   scripts/sanitize.sh tests/test_ops_reference.py -k nan   # build and run what you name instead
#
# Environment: PYTHON (default python3), SANITIZE_DIR (default build/asan), SANITIZE_JOBS
# (ninja's parallelism, default 2), SANITIZE_SKIP_BUILD=1 (reuse the last build).
#
# How: setup.py is not modified. torch's BuildExtension compiles every .cpp with the C compiler
# command of distutils, whose flags come from $CFLAGS (replacing Python's own), and links with
# $LDSHARED + $LDFLAGS + $CFLAGS (or $LDCXXSHARED + $LDFLAGS + $CXXFLAGS); the sanitizer flags go
# into all three. The extension's own -O3 comes after them and wins; -g and the frame pointer
# keep the reports symbolised. Python and torch are not instrumented, so the ASan runtime is
# preloaded (it must be the first library loaded; libstdc++ with it, for ASan's __cxa_throw
# interceptor) and leak detection is off (the interpreter never frees some of its memory, by
# design). Reports are written to build/asan/reports and the script fails if there is any.
#
# What it covers: heap/stack/global buffer overflows and use-after-free in the extension's own
# code, and memory torch or libc touch on its behalf through intercepted functions (memcpy, ...);
# undefined behaviour in the extension's code: signed overflow, shifts, misaligned or null
# pointers, out-of-bounds indices of fixed arrays, invalid bool/enum loads, unreachable code,
# and float-to-integer conversions out of range (GCC's -fsanitize=undefined leaves that check
# out; it is added by name). Not covered: the CUDA kernels (see make gpu-check, which runs
# compute-sanitizer), uninitialised reads (MemorySanitizer needs an instrumented libc++ and
# torch), data races (ThreadSanitizer needs an instrumented torch).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
OUT=${SANITIZE_DIR:-build/asan}
JOBS=${SANITIZE_JOBS:-2}
start=$(date +%s)

SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow"
SAN_FLAGS="$SAN -fno-omit-frame-pointer -g"

# --- build ----------------------------------------------------------------------------------------
mkdir -p "$OUT"
if [[ "${SANITIZE_SKIP_BUILD:-0}" != "1" ]]; then
  echo "sanitize: building the CPU extension with ASan + UBSan into $OUT" >&2
  # The build writes anacuda/_build_info.py into --build-lib; nothing in the source tree changes.
  env ANACUDA_WITH_CUDA=0 MAX_JOBS="$JOBS" \
      CFLAGS="$SAN_FLAGS" CXXFLAGS="$SAN_FLAGS" LDFLAGS="$SAN" \
      "$PYTHON" setup.py -q build_ext --build-temp "$OUT/tmp" --build-lib "$OUT/lib" >"$OUT.build.log" 2>&1 \
    || { tail -n 40 "$OUT.build.log" >&2; echo "sanitize: build failed (log: $OUT.build.log)" >&2; exit 2; }
fi
so=$(ls "$OUT"/lib/anacuda/_C*.so 2>/dev/null | head -n 1 || true)
[[ -n "$so" ]] || { echo "sanitize: no extension in $OUT/lib/anacuda; run without SANITIZE_SKIP_BUILD" >&2; exit 2; }
symbols=$(nm -D "$so")  # (not piped into grep -q: with pipefail, nm's SIGPIPE would fail the test)
if [[ "$symbols" != *__asan_report* ]]; then
  echo "sanitize: $so is not instrumented (no __asan_report symbols); were the flags dropped?" >&2
  exit 2
fi

# --- a package folder that imports the instrumented build -----------------------------------------
PKG="$OUT/pkg"
rm -rf "$PKG"
mkdir -p "$PKG"
cp -r anacuda "$PKG/"
find "$PKG/anacuda" \( -name '_C*.so' -o -name '_build_info.py' -o -name '__pycache__' \) -prune -exec rm -rf {} +
cp "$so" "$OUT/lib/anacuda/_build_info.py" "$PKG/anacuda/"
# tests/conftest.py puts its parent folder first on sys.path: the copy imports $PKG/anacuda.
cp -r tests "$PKG/"
rm -rf "$PKG/tests/__pycache__"
cp pyproject.toml "$PKG/"

# --- run ------------------------------------------------------------------------------------------
REPORTS="$ROOT/$OUT/reports"
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
LIBASAN=$(gcc -print-file-name=libasan.so)
[[ -f "$LIBASAN" ]] || { echo "sanitize: libasan.so not found (gcc -print-file-name=libasan.so)" >&2; exit 2; }
# libstdc++ is preloaded too: ASan intercepts __cxa_throw and must find the real one when it
# starts, before the interpreter (a C program) has loaded libstdc++; without it the first C++
# exception (every TORCH_CHECK that fails) aborts with "CHECK failed ... real___cxa_throw".
LIBSTDCXX=$(gcc -print-file-name=libstdc++.so)

if [[ $# -gt 0 ]]; then
  TESTS=("$@")
else
  # The op tests: every kernel (forward, backward, code, alpha-blend; all dtypes, layouts, noises,
  # strategies), bad inputs and edge cases. torch.compile tests are left out (they run the same
  # kernels; Inductor's C++ compiler under the preloaded runtime only costs time), and so is the
  # slow >2^31-element test (4 GiB in + out, more with ASan's shadow memory).
  TESTS=(tests/test_ops_reference.py tests/test_oracle_scipy.py tests/test_registration.py tests/test_random.py
         tests/test_alpha_blend.py tests/test_memory.py tests/test_ste.py
         tests/test_bad_inputs.py tests/test_properties.py tests/test_robustness.py
         -m "not slow and not cuda" -k "not compile")
fi

echo "sanitize: running ${TESTS[*]}" >&2
set +e
(
  cd "$PKG"
  env LD_PRELOAD="$LIBASAN $LIBSTDCXX" \
      ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_odr_violation=0:log_path=$REPORTS/asan" \
      UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan" \
      ANACUDA_SANITIZE=1 CI=${CI:-1} \
      "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
)
rc=$?
set -e

elapsed=$(( $(date +%s) - start ))
if compgen -G "$REPORTS/*" >/dev/null; then
  echo "sanitize: FAILED: sanitizer reports (${elapsed}s):" >&2
  for f in "$REPORTS"/*; do echo "--- $f" >&2; cat "$f" >&2; done
  exit 1
fi
if [[ $rc -ne 0 ]]; then
  echo "sanitize: FAILED: pytest exited with $rc and no sanitizer report (${elapsed}s)" >&2
  exit "$rc"
fi
echo "sanitize: OK, no sanitizer reports (${elapsed}s)" >&2
