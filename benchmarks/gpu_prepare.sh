#!/usr/bin/env bash
# Run HERE (a machine with PyPI access) before a GPU session: what benchmarks/gpu_check.sh needs there and
# the GPU machine's image lacks. Both folders are git-ignored locally (.git/info/exclude) and travel with
# the device tool's `carry`:
#   .whl/       pydantic and the packages it needs, as wheels for the GPU image's Python (3.12, x86-64)
#   .gpu_data/  Fashion-MNIST (Debian's dataset-fashion-mnist) and the word lists, so the shipped configs train there
# Then, with the device tool:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_data"])
set -euo pipefail
cd "$(dirname "$0")/.."
for path in /.whl/ /.gpu_data/; do
    grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
rm -rf .whl && mkdir -p .whl
wheels="pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $wheels
mkdir -p .gpu_data/fashion-mnist
cp /usr/share/datasets/fashion-mnist/*.gz .gpu_data/fashion-mnist/
mkdir -p .gpu_data/dict  # the word lists of configs/wordlists_*.yaml (Debian's w* packages)
for list in american-english ngerman french spanish italian portuguese dutch; do
    cp "/usr/share/dict/$list" .gpu_data/dict/
done
du -sh .whl .gpu_data
