#!/usr/bin/env bash
# Fetch here, into .whl/ (ignored by git), the wheels bench/device_check.sh needs on the lent GPU machine, which cannot
# download: the serving packages (fastapi, uvicorn), the official openai client and bitsandbytes (quantize=; 43 MB of
# the ~49), for its Python 3.12, with what they need - less what that machine's image already has (the device tool's
# KINDS.md lists it). The working tree and these together must stay under the tool's 64 MiB.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
download=(python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl)
"${download[@]}" fastapi uvicorn openai
"${download[@]}" --no-deps "bitsandbytes>=0.50"  # it needs numpy, packaging and torch: the image's
# Already in the image: keep its own versions.
for name in anyio certifi click h11 httpcore httpx idna annotated_doc tqdm; do
  rm -f .whl/"$name"-*.whl
done
ls .whl && du -sh .whl
