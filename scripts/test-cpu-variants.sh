#!/usr/bin/env bash
# The tests as machines with other CPUs run them (`make test-cpu-variants`; README, "Tests").
#
# torch picks its kernels by the CPU it finds (default, AVX2, AVX-512, AMX); ATEN_CPU_CAPABILITY
# holds it to one set, so one machine can run the suite as an older or plainer one would. The
# avx2 variant also caps oneDNN (ONEDNN_MAX_CPU_ISA=AVX2): its int8 GEMM without VNNI is another
# code path (the served question encoder falls back to fp32 there, embeddings/int8.py).
# llama.cpp is built for AVX2 on every machine (LLAMA_CMAKE_ARGS in the Makefile); on a CPU with
# AVX-512 a second build with AVX-512 kernels goes to .llama-avx512/ (built once, ~5 min) and the
# GGUF tests run against it, as they would against a build made natively elsewhere.
#
# Usage: scripts/test-cpu-variants.sh [pytest args]   (default: the whole suite)
#        CPU_VARIANTS="avx2 default llama-avx512"       (default: all three)
# Exit code: 0 when every variant passed, else the first failing variant's pytest code.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(tests)
LLAMA_AVX512=.llama-avx512
status=0
summary=()

run_variant() {  # name, then env assignments; pytest runs with ARGS
    local name=$1; shift
    echo "== $name =="
    env "$@" "$BIN/python" -m pytest -p no:cacheprovider -q "${ARGS[@]}"
    local rc=$?
    summary+=("$name: exit $rc")
    [ $rc -eq 0 ] || [ $status -ne 0 ] || status=$rc
}

build_llama_avx512() {
    [ -f "$LLAMA_AVX512/.built" ] && return 0
    local version
    version=$("$BIN/python" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
    rm -rf "$LLAMA_AVX512"
    # --no-cache-dir: pip's wheel cache keys on the version, not on CMAKE_ARGS, so a cached AVX2
    # wheel would come back, and this build must not replace that wheel in the cache either.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 "$BIN/pip" install -q --no-deps --no-cache-dir --target "$LLAMA_AVX512" \
        "llama_cpp_python==$version" && touch "$LLAMA_AVX512/.built"
}

for variant in ${CPU_VARIANTS:-avx2 default llama-avx512}; do
    case $variant in
        avx2) run_variant "torch ATEN_CPU_CAPABILITY=avx2, oneDNN AVX2" "ATEN_CPU_CAPABILITY=avx2" \
            "ONEDNN_MAX_CPU_ISA=AVX2" ;;
        default|avx512) run_variant "torch ATEN_CPU_CAPABILITY=$variant" "ATEN_CPU_CAPABILITY=$variant" ;;
        llama-avx512)
            if ! grep -qw avx512f /proc/cpuinfo; then
                summary+=("llama.cpp AVX-512: skipped, this CPU has no AVX-512"); continue
            fi
            if ! build_llama_avx512; then
                summary+=("llama.cpp AVX-512: build failed"); [ $status -ne 0 ] || status=3; continue
            fi
            run_variant "llama.cpp AVX-512 build" "PYTHONPATH=$PWD/$LLAMA_AVX512" "DATACREEK_LLAMA_VARIANT=avx512" ;;
        *) echo "unknown variant $variant (avx2, default, avx512, llama-avx512)" >&2; exit 2 ;;
    esac
done
printf '%s\n' "${summary[@]}"
exit $status
