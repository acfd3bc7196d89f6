#!/usr/bin/env bash
# Run the README's test command under a matrix of machine conditions, on demand (not part of
# .ci/run): each OpenBLAS kernel this CPU supports (OPENBLAS_CORETYPE), the machine's own
# setting, OMP_NUM_THREADS=1, and every core kept busy by a background load. A suite that
# passes here does not depend on this CPU's rounding or speed. Prints the kernel each config
# really used (threadpoolctl) and a table of pass/fail counts per config at the end.
#
#   bash .ci/matrix.sh                          # every config, 3 runs each, the whole suite
#   bash .ci/matrix.sh -n 1 -c Haswell,busy     # some configs, once
#   bash .ci/matrix.sh -n 1 -- tests/test_subset_invariance.py -k svc_approx   # a selection
#
# Options: -n N runs per config (default 3); -c LIST comma-separated configs (default: all;
# -l lists them); -o DIR logs (default: a new temporary folder). Arguments after -- go to
# pytest. Exit status: 0 when every run passed.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=3
only=""
logs=""
list=0
while getopts "n:c:o:lh" opt; do
    case "$opt" in
        n) runs="$OPTARG" ;;
        c) only="$OPTARG" ;;
        o) logs="$OPTARG" ;;
        l) list=1 ;;
        *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
pytest_args=("$@")
python="${PYTHON:-.venv/bin/python}"
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: -n: runs must be a positive integer, got '$runs'" >&2
    exit 2
fi

# OpenBLAS kernels and the CPU flags (/proc/cpuinfo) each one needs; only those this CPU has
# are run. numpy's and scipy's bundled OpenBLAS honour OPENBLAS_CORETYPE; torch's own BLAS
# (MKL, statically linked) does not, and the nn head computes in float64 on purpose.
flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
declare -A needs=(
    [SkylakeX]="avx512f avx512bw avx512vl avx512dq avx512cd"
    [Haswell]="avx2 fma"
    [Sandybridge]="avx"
    [Prescott]="pni"
)
configs=(default)
for kernel in SkylakeX Haswell Sandybridge Prescott; do
    supported=1
    for flag in ${needs[$kernel]}; do
        [[ "$flags" == *" $flag "* ]] || supported=0
    done
    ((supported)) && configs+=("$kernel")
done
configs+=(omp1 busy)
if ((list)); then
    printf '%s\n' "${configs[@]}"
    exit 0
fi
if [[ -n "$only" ]]; then
    IFS=, read -r -a wanted <<<"$only"
    for config in "${wanted[@]}"; do
        if ! printf '%s\n' "${configs[@]}" | grep -qx -- "$config"; then
            echo "error: -c: '$config' is not a config this machine can run (one of: ${configs[*]})" >&2
            exit 2
        fi
    done
    configs=("${wanted[@]}")
fi
logs="${logs:-$(mktemp -d -t matrix.XXXXXX)}"
mkdir -p "$logs"

# The background load of the "busy" config: one spinning process per core, each bounded by
# `timeout` and killed (by its own process id) when the config ends or this script exits.
load_pids=()
stop_load() {
    for pid in "${load_pids[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    load_pids=()
}
trap stop_load EXIT
trap 'stop_load; exit 130' INT TERM
start_load() {
    local cores
    cores="$(nproc)"
    for _ in $(seq "$cores"); do
        timeout "${MATRIX_LOAD_SECONDS:-14400}" sh -c 'while :; do :; done' &
        load_pids+=("$!")
    done
    echo "  background load: $cores spinning processes (pids ${load_pids[*]})"
}

# The environment of a config, as `env` arguments.
config_env() {
    case "$1" in
        default) ;;
        omp1) echo "OMP_NUM_THREADS=1" ;;
        busy) ;;
        *) echo "OPENBLAS_CORETYPE=$1" ;;
    esac
}

blas_report() {
    # shellcheck disable=SC2046
    env $(config_env "$1") "$python" - <<'EOF'
import numpy, scipy.linalg  # noqa: F401  (load the BLAS libraries)
from threadpoolctl import threadpool_info
for lib in threadpool_info():
    if lib["user_api"] == "blas":
        name = lib["filepath"].split("site-packages/")[-1]
        print(f"    {name}: {lib['internal_api']} {lib.get('version')}, kernel "
              f"{lib.get('architecture')}, {lib['num_threads']} threads")
try:
    import torch
    print(f"    torch: BLAS {torch.backends.mkl.is_available() and 'mkl' or 'other'} "
          f"(ignores OPENBLAS_CORETYPE), {torch.get_num_threads()} threads")
except ImportError:
    pass
EOF
}

declare -A kernel_used passed_runs failed_runs tests_failed tests_passed
for config in "${configs[@]}"; do
    echo "== $config: $(config_env "$config" | tr '\n' ' ')"
    report="$(blas_report "$config")"
    echo "$report"
    kernel_used[$config]="$(echo "$report" | grep -o 'kernel [A-Za-z0-9]*' | sort -u | cut -d' ' -f2 | paste -sd/)"
    passed_runs[$config]=0 failed_runs[$config]=0 tests_failed[$config]=0 tests_passed[$config]=0
    [[ "$config" == busy ]] && start_load
    for i in $(seq "$runs"); do
        log="$logs/$config-$i.log"
        # shellcheck disable=SC2046
        env $(config_env "$config") "$python" -m pytest -q -p no:cacheprovider "${pytest_args[@]}" \
            >"$log" 2>&1
        status=$?
        summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)|no tests ran' "$log" | tail -1)"
        failed=$(echo "$summary" | grep -oE '[0-9]+ (failed|errors?)' | awk '{s += $1} END {print s + 0}')
        passed=$(echo "$summary" | grep -oE '[0-9]+ passed' | awk '{print $1 + 0}')
        tests_failed[$config]=$((tests_failed[$config] + failed))
        tests_passed[$config]=$((tests_passed[$config] + ${passed:-0}))
        if ((status == 0)); then
            passed_runs[$config]=$((passed_runs[$config] + 1))
        else
            failed_runs[$config]=$((failed_runs[$config] + 1))
            grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
        fi
        echo "  run $i: exit $status, ${summary//=/} ($log)"
    done
    [[ "$config" == busy ]] && stop_load
done

echo
printf '%-12s %-22s %6s %6s %6s %13s %13s\n' config kernel runs pass fail "tests passed" "tests failed"
all_ok=0
for config in "${configs[@]}"; do
    printf '%-12s %-22s %6s %6s %6s %13s %13s\n' "$config" "${kernel_used[$config]}" "$runs" \
        "${passed_runs[$config]}" "${failed_runs[$config]}" "${tests_passed[$config]}" \
        "${tests_failed[$config]}"
    ((failed_runs[$config] == 0)) || all_ok=1
done
echo "logs: $logs"
exit "$all_ok"
