#!/usr/bin/env bash
# The trainer's GPU checks, as one command on a CUDA machine (about 5 minutes on one H200):
#  1. tests/test_webdataset_distributed.py on the GPU: shards with corrupt images, empty captions and a
#     missing member, trained under torchrun with one process per GPU present (NCCL when there are several);
#  2. the ViT-B-16 recipe (configs/vit-b-16-webdataset.yaml) for 500 steps against the k = 1 cosine run:
#     samples/s and peak memory (bench_train_gpu.py);
#  3. the webdataset loader alone at several worker counts against open_clip's pipeline (bench_loader.py),
#     to set beside 2.'s samples/s of the whole step.
# Usage: bash benchmarks/gpu_trainer_checks.sh OUT_DIR   (each part's output goes to OUT_DIR/*.txt)
set -uo pipefail
out=${1:?usage: gpu_trainer_checks.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"
MANIFOLD_ALIGN_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider \
    tests/test_webdataset_distributed.py 2>&1 | tee "$out/shards.txt"
(cd benchmarks && timeout 420 python3 bench_train_gpu.py --steps 500 --batch-size 128 --workers 12 \
    --log-every 25 --no-write) 2>&1 | tee "$out/train_gpu.txt"
timeout 240 python3 benchmarks/bench_loader.py --workers 4 8 12 --repeats 1 --samples 6144 --shards 24 \
    --write "$out/loader_gpu.md" 2>&1 | tee "$out/loader.txt"
