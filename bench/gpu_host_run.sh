#!/usr/bin/env bash
# The GPU-host run behind docs/benchmarks.md, for a lent machine without network. Start it
# detached from the repository root once the parts are in /tmp/parts:
#   /tmp/parts/product/  the product's wheels (scripts/gpu_host_wheels.py: part-NN, SHA256)
#   /tmp/parts/vllm/     the vLLM 0.26.0 bundle (../shared/gpu-host/build-vllm-bundle.sh): needed
#                        by readme, engine, kv and the measurements, and by every check when
#                        the product's wheels were made --beside it (they lack what it brings)
#   /tmp/parts/jsquad-valid-v1.3.json and /tmp/parts/make_dummy_llama13b.py
# (scripts/gpu_host_send.py stages them one call each and lists the calls; docs/llm.md)
#     BENCH_COMMIT=<sha> setsid nohup bash bench/gpu_host_run.sh > /tmp/gh/run.log 2>&1 &
# It installs, then on the second card runs the test suite, follows the README's GPU section
# up to the first answer (pipeline.ask), runs the real-engine tests and the KV-cache
# diagnosis, one after the other, while the first card holds the product: the settings saves
# in a row with the GPU memory after each (bench.reload_memory), the corpus builder's figures
# (bench.index_build, with GH_BUILD_ARGS, e.g. "--parts bm25 --bm25-passages 5555583"), then
# bench.gpu_host measure (bf16, FP8, then tensor parallel over both cards once the second is
# free); with two cards the builder waits for the second card's checks (it times E5 on both).
# With one card all of it runs on that card, one after the other: the test suite (beside
# prepare), the saves and the builder, then the checks that start an engine, the
# measurements last. BENCH_COMMIT names the commit measured (the copy has no .git).
# Everything it reports lands in /tmp/gh/out, emptied first. When nothing after the builder
# reads prepare's mirror (no readme, kv or measurements), the builder removes it first:
# the mirror takes ~19 GB and BM25 over 5.5M synthetic passages ~25 GB of the H200 host's 62 GB.
# GH_TESTS_TIMEOUT_S (default 1800) bounds the test suite's run; GH_TESTS_PATHS (default: the
# whole suite) names test files instead, e.g. tests/test_gpu_host.py on a short lease.
# GH_MPS=1 measures the configurations a second time under NVIDIA MPS (the control daemon
# started after the first measurements, stopped after the second), into gpu_host_vllm_mps.json.
# GH_MPS=only measures once, all under MPS, into gpu_host_vllm_mps.json (one engine start).
# GH_BUILD_BESIDE=1 (one card) starts the builder right after the install, beside the test
# suite, prepare, the saves and the engine's start (CPU only; the measurements wait for it):
# all of it fits one lease, and the builder's times are then upper bounds, as its log says.
# Not for BM25 at 5.5M passages beside measurements: it needs ~25 GB of disk at its peak
# (1.22 billion synthetic entries, ~20 bytes each; ~30 before 2026-12-05's fix, when its
# merge died beside the kept ~19 GB mirror on the host's 62 GB); alone, the builder removes
# the mirror first.
# GH_INDEX_BACKEND (default exact) is the product's index.backend in the measurements
# (exact-int8: the int8 scan). The check "scan" times that scan beside the fp16 one, with
# its recall, over 5.5M clustered vectors (python -m bench.gpu --parts int8).
# GH_ROWS (default 5,555,583) sizes prepare's mirror, GH_USERS (default 1,8,32,64) the
# levels measured and GH_TEXTBOOK (default fp8) the configurations with the textbook
# pipeline: smaller where little device time is left (GH_ROWS=1000000 GH_USERS=32
# GH_TEXTBOOK=; not the issue's full-size figures).
# GH_QUERY_ENCODER (default auto) is the product's embedding.query_encoder in the probe and
# the measurements (captured: CUDA graphs recorded by hand, not by torch.compile), and
# GH_SETTINGS more of the product's settings there, as KEY=VALUE (dotted paths) separated by
# spaces, e.g. "index.scan_graphs=true". GH_PROBES runs the probe once for each of its
# variants (separated by spaces; each KEY=VALUE,KEY=VALUE over GH_SETTINGS), one after the
# other on the card, into probe_<variant>.json, e.g.
# "embedding.query_encoder=compiled embedding.query_encoder=captured,index.scan_graphs=true".
# The check "probe" (not in the default) runs only the burst probe, no engine, into
# probe.json (python -m bench.gpu_host probe); with GH_PROBE_BASELINE, a folder holding
# another commit's pipeline/ (and that commit in a file COMMIT), the same first with that
# pipeline, into probe_baseline.json: the two side by side on one card, both after
# prepare wrote the files they read (in the page cache for both).
# GH_CHECKS (default "tests readme engine kv reload scan build") names the checks to run,
# GH_CONFIGS (default bf16,fp8,tp2; bf16,fp8 on one card) the engine configurations to
# measure, e.g. GH_CHECKS=readme GH_CONFIGS=fp8. Set and empty, each means none:
# GH_CHECKS= GH_CONFIGS=fp8 measures FP8 alone, GH_CONFIGS= runs the checks alone.
set -u -o pipefail
G=/tmp/gh
rm -rf "$G/out" && mkdir -p "$G/out" /tmp/shared/data
rm -f "$G"/*.done "$G/done"  # a second run on a warm machine starts afresh
rm -rf /tmp/repo && cp -r "$(pwd)" /tmp/repo && cd /tmp/repo
# where tests/conftest.py looks (../shared/data); never over an existing file, which on a
# workstation can be the shared original behind a link
[ -e /tmp/shared/data/jsquad-valid-v1.3.json ] || cp /tmp/parts/jsquad-valid-v1.3.json /tmp/shared/data/
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false PATH=/tmp/py/site-packages/bin:$PATH PYTHONPATH=/tmp/py/site-packages
# The target folder is named site-packages: Streamlit anywhere else takes itself for a
# development checkout and refuses .streamlit/config.toml's server.port (AppTest failed so).
step() { echo "== $(date -u +%T) $*"; gpu_processes "$*"; }
gpu_processes() {  # who holds GPU memory at each step (on 2026-12-05 ~10 GB were held by no known process)
    { echo "== $(date -u +%T) $1"; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
    } >> "$G/out/gpu_processes.txt" 2>&1
}

step install
unpack() {  # the parts of one tar (part-NN, SHA256) into /tmp, checked
    (cd "$1" && cat part-* > parts.tar && sed "s/ [^ ]*\$/ parts.tar/" SHA256 | sha256sum -c - \
        && tar -xf parts.tar -C /tmp && rm parts.tar part-*)
}
mkdir -p /tmp/py/site-packages
# The bundle first: the product's wheels, made beside it, leave out what it brings
# (pydantic, fastapi, openai, ...), so they do not import without it.
vllm_ready=/tmp/py/site-packages/.vllm-installed
if ls /tmp/parts/vllm/part-* >/dev/null 2>&1 && [ ! -e /tmp/parts/vllm/SHA256 ]; then
    step "the vLLM bundle's parts are there without SHA256 (it travels with the last part): incomplete"
    exit 1
fi
if [ -e /tmp/parts/vllm/SHA256 ] && ls /tmp/parts/vllm/part-* >/dev/null 2>&1 && [ ! -e "$vllm_ready" ]; then
    unpack /tmp/parts/vllm || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/py/site-packages /tmp/vb/*.whl || exit 1
    touch "$vllm_ready"
fi
if [ -e /tmp/parts/product/SHA256 ] && ls /tmp/parts/product/part-* >/dev/null 2>&1; then
    unpack /tmp/parts/product || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/py/site-packages \
        /tmp/wheels/*.whl || exit 1
fi
python3 -c "import pipeline.api.app, pipeline.serving.runtime, pipeline.retrieval.dense.loading, llama_index.embeddings.huggingface, llama_index.vector_stores.faiss
import torch, llama_index.core, streamlit, datasets, faiss, fugashi, bm25s, transformers
print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee "$G/out/versions.txt" || exit 1
python3 -c "import vllm, openai; print('vllm', vllm.__version__, 'openai', openai.__version__)" \
    >> "$G/out/versions.txt" 2>/dev/null
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader | tee -a "$G/out/versions.txt"
has_vllm() {  # false, and says so, without the bundle
    [ -e "$vllm_ready" ] || { step "no vLLM bundle in /tmp/parts/vllm: $1 skipped"; return 1; }
}
cards=$(nvidia-smi -L | wc -l)
second=$(( cards > 1 ? 1 : 0 ))
checks=" ${GH_CHECKS-tests readme engine kv reload scan build} "
read -r -a settings_values <<< "${GH_SETTINGS-}"
settings_args=("${settings_values[@]/#/--set=}")  # GH_SETTINGS as --set=KEY=VALUE arguments
has() { [[ "$checks" == *" $1 "* ]]; }
# README GPU section as written: the jawiki profile, the local backend, the first streamed
# answer (dummy weights from the mirror that prepare writes).
readme_ask() {
    RAG_PROFILE=jawiki RAG_HUB_MIRROR=$G/mirror RAG_CACHE_DIR=$G/cache-readme RAG_INDEX_BACKEND=exact \
    RAG_LLM_BACKEND=local RAG_LLM_EXTRA_ARGS="--load-format dummy" CUDA_VISIBLE_DEVICES=$second \
        python3 -m pipeline.ask "日本で梅雨がないのは北海道とどこか。" --json > "$G/out/readme_ask.txt" 2> "$G/out/readme_ask.err"
    echo "ask exit $?" >> "$G/out/readme_ask.err"
}
step "the second card: the test suite, then the README's first answer, the real-engine tests, the KV diagnosis"
(
    if has tests; then
        # shellcheck disable=SC2086  # GH_TESTS_PATHS is a list of test files
        CUDA_VISIBLE_DEVICES=$second timeout -k 60 "${GH_TESTS_TIMEOUT_S:-1800}" python3 -m pytest -q -p no:cacheprovider -n 8 -m "not browser and not schemathesis" \
            -k "not real_engine" ${GH_TESTS_PATHS-} > "$G/out/pytest.log" 2>&1
        echo "pytest exit $?" >> "$G/out/pytest.log"
        gpu_processes "the test suite ended"
    fi
    touch "$G/tests.done"
) &

build() {
    # shellcheck disable=SC2086  # GH_BUILD_ARGS is a list of arguments
    python3 -m bench.index_build --out "$G/out/index_build.json" ${GH_BUILD_ARGS-} >> "$G/out/index_build.log" 2>&1
    echo "build exit $?" >> "$G/out/index_build.log"
}
beside=
if has build && [ -n "${GH_BUILD_BESIDE-}" ] && [ "$cards" -eq 1 ]; then
    if [[ " ${GH_BUILD_ARGS-} " != *" --parts "* || "${GH_BUILD_ARGS-}" == *e5* ]]; then
        step "GH_BUILD_BESIDE needs GH_BUILD_ARGS with --parts and no e5 (E5 runs on the GPU): not beside"
    else
        step "the builder, beside the test suite, prepare, the saves and the engine start: its times are upper bounds"
        echo "beside the test suite, prepare, the saves and the engine start: times are upper bounds" > "$G/out/index_build.log"
        (build; touch "$G/build.done") &
        beside=1
    fi
fi

configs=bf16,fp8,tp2
if [ "$cards" -eq 1 ]; then configs=bf16,fp8; fi
configs=${GH_CONFIGS-$configs}
if has readme || has kv || has reload || has probe || [ -n "$configs" ]; then  # what reads the mirror (~19 GB, ~2 min)
    step prepare
    python3 -m bench.gpu_host prepare "$G" --jsquad /tmp/parts/jsquad-valid-v1.3.json \
        --dummy-llm-script /tmp/parts/make_dummy_llama13b.py ${GH_ROWS:+--rows "$GH_ROWS"} > "$G/out/prepare.json" || exit 1
    cat "$G/out/prepare.json"
fi
(  # one after the other: an engine beside the test suite's CUDA contexts could starve them
    while [ ! -e "$G/tests.done" ]; do sleep 2; done
    if [ "$cards" -eq 1 ]; then  # nor beside the saves' exact-search matrix on the one card
        while [ ! -e "$G/first.done" ]; do sleep 2; done
    fi
    if has readme && has_vllm readme; then readme_ask; fi
    if has engine && has_vllm engine; then
        CUDA_VISIBLE_DEVICES=$second python3 -m pytest -q -p no:cacheprovider -k real_engine tests/test_gpu_host.py \
            > "$G/out/pytest_engine.log" 2>&1
        echo "pytest exit $?" >> "$G/out/pytest_engine.log"
    fi
    if has kv && has_vllm kv; then
        CUDA_VISIBLE_DEVICES=$second python3 -m bench.gpu_host diagnose-kv "$G" --out "$G/out/diagnosis_kv.json"
    fi
    touch "$G/second.done"
) &

step "the first card: settings saves in a row, the int8 scan, the burst probe, the corpus builder"
while [ ! -e "$G/tests.done" ]; do sleep 2; done  # alone on the card and the cores while measured
if has reload; then
    CUDA_VISIBLE_DEVICES=0 python3 -m bench.reload_memory "$G" --out "$G/out/reload_memory.json" > "$G/out/reload_memory.log" 2>&1
    echo "reload exit $?" >> "$G/out/reload_memory.log"
    gpu_processes "the saves ended"
fi
if has scan; then
    if [ "$cards" -gt 1 ]; then  # its host-side re-scoring wants the cores to itself
        while [ ! -e "$G/second.done" ]; do sleep 2; done
    fi
    CUDA_VISIBLE_DEVICES=0 python3 -m bench.gpu --parts int8 --out "$G/out/gpu_scan.json" > "$G/out/gpu_scan.log" 2>&1
    echo "scan exit $?" >> "$G/out/gpu_scan.log"
fi
if has probe; then  # the burst probe, no engine: GH_PROBE_BASELINE's tree first, then this one
    probe() {  # $1: the results file, $2: the product's embedding.query_encoder, the rest: --set ...
        local out=$1 encoder=$2
        shift 2
        python3 -m bench.gpu_host probe "$G" --out "$G/out/$out" --index-backend "${GH_INDEX_BACKEND:-exact}" \
            --query-encoder "$encoder" "$@" >> "$G/out/probe.log" 2>&1
        echo "probe exit $?" >> "$G/out/probe.log"
    }
    if [ -n "${GH_PROBE_BASELINE-}" ]; then  # its pipeline/ first on the path, this bench/ after it
        (cd "$GH_PROBE_BASELINE" && PYTHONPATH="/tmp/repo:$PYTHONPATH" BENCH_COMMIT=$(cat COMMIT) \
            CUDA_VISIBLE_DEVICES=0 probe probe_baseline.json auto)  # its settings may lack newer encoders
    fi
    if [ -n "${GH_PROBES-}" ]; then  # one probe per variant, one after the other
        for variant in $GH_PROBES; do
            IFS=, read -r -a pairs <<< "$variant"
            CUDA_VISIBLE_DEVICES=0 probe "probe_${variant//[^A-Za-z0-9_.-]/_}.json" "${GH_QUERY_ENCODER:-auto}" \
                "${settings_args[@]}" "${pairs[@]/#/--set=}"
        done
    else
        CUDA_VISIBLE_DEVICES=0 probe probe.json "${GH_QUERY_ENCODER:-auto}" "${settings_args[@]}"
    fi
fi
if [ -z "$beside" ] && has build; then
    if [ "$cards" -gt 1 ]; then  # it times E5 on every card: not beside the second card's engines
        while [ ! -e "$G/second.done" ]; do sleep 2; done
    fi
    if ! has readme && ! has kv && [ -z "$configs" ]; then
        # nothing later reads prepare's mirror (~19 GB): room for BM25's ~25 GB at 5.5M passages
        rm -rf "$G/mirror" "$G/cache"
    fi
    build
fi
touch "$G/first.done"

step measure
if [ "$cards" -eq 1 ]; then
    while [ ! -e "$G/second.done" ]; do sleep 2; done
fi
measured_after=tests.done  # the engine loads beside the rest; the measurements come after it
if [ -n "$beside" ]; then measured_after=build.done; fi
measure() {  # $1: the results file; the rest: more arguments
    local out=$1
    shift
    python3 -m bench.gpu_host measure "$G" --out "$G/out/$out" --configs $configs \
        --wait-for "$G/$measured_after" --second-card-free "$G/second.done" \
        --index-backend "${GH_INDEX_BACKEND:-exact}" --query-encoder "${GH_QUERY_ENCODER:-auto}" \
        "${settings_args[@]}" --textbook "${GH_TEXTBOOK-fp8}" \
        ${GH_USERS:+--users "$GH_USERS"} "$@" >> "$G/out/measure.log" 2>&1  # back with the results, even midway
    echo "measure exit $?"
}
mps_on() {  # the control daemon; every CUDA process started after it shares the card through it
    if nvidia-cuda-mps-control -d; then
        trap 'echo quit | nvidia-cuda-mps-control > /dev/null 2>&1' EXIT  # also when the run dies
        return 0
    fi
    step "no MPS here: nvidia-cuda-mps-control did not start"
    return 1
}
if [ -n "$configs" ] && has_vllm measure && [ "${GH_MPS-}" = only ]; then
    # one pass, all of it under MPS (textbook included): half the lease of GH_MPS=1
    while [ ! -e "$G/second.done" ]; do sleep 2; done
    if mps_on; then
        step "the measurements under MPS"
        measure gpu_host_vllm_mps.json
        echo quit | nvidia-cuda-mps-control
    fi
elif [ -n "$configs" ] && has_vllm measure; then
    measure gpu_host_vllm.json
    if [ -n "${GH_MPS-}" ]; then  # the same again with NVIDIA MPS: E5 and the scan beside vLLM's kernels
        while [ ! -e "$G/second.done" ]; do sleep 2; done  # no other CUDA process may start under it
        if mps_on; then
            step "the same measurements under MPS (no textbook)"
            measure gpu_host_vllm_mps.json --textbook ""
            echo quit | nvidia-cuda-mps-control
        fi
    fi
fi
wait
step done
touch "$G/done"
