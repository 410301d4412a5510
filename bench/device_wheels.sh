#!/usr/bin/env bash
# Fetch here, into .whl/ (ignored by git), the wheels bench/device_check.sh needs on the lent GPU machine, which cannot
# download: the serving packages (fastapi, uvicorn) and the official openai client, for its Python 3.12, with what
# they need - less what that machine's image already has (the device tool's KINDS.md lists it).
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-warn-script-location --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  fastapi uvicorn openai
# Already in the image: keep its own versions.
for name in anyio certifi click h11 httpcore httpx idna annotated_doc tqdm; do
  rm -f .whl/"$name"-*.whl
done
ls .whl && du -sh .whl
