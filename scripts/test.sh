#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them:
#   Debian's chromium (headless browser test), CJK fonts (readable screenshots),
#   postgresql (the history tests start throwaway servers of their own on 127.0.0.1) and
#   nginx (the proxy test runs one in front of streamlit, on 127.0.0.1),
#   a virtual environment with requirements-dev.txt, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -q "Noto Sans CJK" \
    || ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || [ ! -x /usr/sbin/nginx ]; then
    sudo_if_needed=""
    [ "$(id -u)" -ne 0 ] && sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq --no-install-recommends \
        chromium fonts-noto-cjk fonts-noto-color-emoji postgresql nginx >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q -r requirements-dev.txt
python -m pytest "$@"
