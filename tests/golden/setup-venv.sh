#!/usr/bin/env bash
# setup-venv.sh [DIR] — the throwaway Python environment the golden scripts run in:
# llama.cpp (through llama-cpp-python, built from source by pip: ~10 minutes on 2 cores),
# jinja2 for the models' own chat templates, sentencepiece and gguf for the SPM vocabulary.
# Prints the python path to use.  Only the regeneration of golden files needs it; the
# test suite reads the committed outputs.
set -euo pipefail
dir=${1:-${GOLDEN_VENV:-/tmp/ppd-golden-venv}}
if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c 'import llama_cpp, jinja2, sentencepiece, gguf, numpy' 2>/dev/null; then
  python3 -m venv "$dir" >&2
  "$dir/bin/pip" install -q llama-cpp-python==0.3.36 jinja2==3.1.6 sentencepiece==0.2.3 gguf numpy >&2
fi
echo "$dir/bin/python"
