"""The webdataset loader alone: our pipeline against open_clip's on the same shards, samples/s.

Both read the same shards (made by this script: smooth random JPEG images and short captions), decode,
apply the same open_clip training transform (random resized crop to ``--image-size``, normalize) and
tokenize with the same open_clip tokenizer, into batches of ``--batch-size``. Ours is
``manifold_align_train.data.WebDatasetLoader``; the baseline is ``open_clip_train.data.get_wds_dataset`` (open_clip's own
pipeline, as its trainer builds it). Nothing else runs: no model. Each (pipeline, workers) pair is timed
``--repeats`` times, from creating the iterator (worker start-up included) to the last batch, alternating
the two pipelines; the table gives the best run of each and the ratio ours / open_clip.

    python benchmarks/bench_loader.py --samples 2048 --repeats 3 --write benchmarks/results/loader.md
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tarfile
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import header_lines  # noqa: E402

WORDS = ["red", "green", "blue", "square", "circle", "photo", "drawing", "small", "large", "of", "a", "the"]


def make_shards(folder: Path, samples: int, shards: int, source_size: int, seed: int = 0) -> str:
    """Write ``samples`` JPEG/caption pairs into ``shards`` tar files; return the brace pattern."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, source_size, dtype=np.float32)
    per_shard = math.ceil(samples / shards)
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(s * per_shard, min(samples, (s + 1) * per_shard)):
                a, b, c = rng.uniform(0, 255, size=(3, 3))
                image = (a[:, None, None] * grid[None, :, None] + b[:, None, None] * grid[None, None, :]
                         + c[:, None, None] * grid[None, :, None] * grid[None, None, :]) % 256
                image = image + rng.normal(0, 8, size=image.shape)
                buffer = io.BytesIO()
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(
                    buffer, format="JPEG", quality=90)
                caption = " ".join(rng.choice(WORDS, size=8)).encode()
                for name, data in ((f"{i:07d}.jpg", buffer.getvalue()), (f"{i:07d}.txt", caption)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"shard-{{000..{shards - 1:03d}}}.tar")


def ours(pattern: str, transform, tokenizer, batch_size: int, samples: int, workers: int):
    from manifold_align_train.data import WebDatasetLoader

    loader = WebDatasetLoader(pattern, transform, tokenizer, batch_size, num_samples=samples, seed=0,
                              workers=workers, shuffle_buffer=1000)
    return (batch.images.shape[0] for batch in loader.epoch_batches(0))


def _open_clip_tar_samples(src, handler=None):
    """open_clip's ``tarfile_to_samples_nothrow`` minus webdataset >= 1.0's end-of-shard markers (empty dicts),
    which its ``group_by_keys_nothrow`` does not expect (KeyError 'fname'): the one change to the baseline."""
    from open_clip_train import data
    from webdataset.tariterators import tar_file_expander, url_opener

    handler = handler or data.log_and_continue
    files = (f for f in tar_file_expander(url_opener(src, handler=handler), handler=handler) if f)
    return data.group_by_keys_nothrow(files, handler=handler)


def open_clip_baseline(pattern: str, transform, tokenizer, batch_size: int, samples: int, workers: int):
    from open_clip_train import data
    from open_clip_train.data import get_wds_dataset

    data.tarfile_to_samples_nothrow = _open_clip_tar_samples

    args = Namespace(train_data=pattern, train_num_samples=samples, batch_size=batch_size, workers=workers,
                     world_size=1, seed=0, dataset_resampled=False, train_data_upsampling_factors=None)
    info = get_wds_dataset(args, transform, is_train=True, epoch=0, floor=True, tokenizer=tokenizer)
    return (images.shape[0] for images, _ in info.dataloader)


PIPELINES = {"ours": ours, "open_clip": open_clip_baseline}


def time_once(make, *args) -> tuple[float, int]:
    """Seconds from creating the iterator to its last batch, and the samples it gave."""
    start = time.perf_counter()
    n = sum(make(*args))
    return time.perf_counter() - start, n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--source-size", type=int, default=256, help="side of the JPEGs in the shards (px)")
    parser.add_argument("--image-size", type=int, default=224, help="side of the transformed images (px)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--write", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transform import image_transform

    transform = image_transform(args.image_size, is_train=True)
    tokenizer = SimpleTokenizer(context_length=77)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        pattern = make_shards(Path(folder), args.samples, args.shards, args.source_size)
        for workers in args.workers:
            best = {name: (math.inf, 0) for name in PIPELINES}
            for _ in range(args.repeats):
                for name, make in PIPELINES.items():
                    seconds, n = time_once(make, pattern, transform, tokenizer, args.batch_size, args.samples,
                                           workers)
                    if seconds < best[name][0]:
                        best[name] = (seconds, n)
            rates = {name: n / seconds for name, (seconds, n) in best.items()}
            rows.append((workers, best, rates))
            print(f"workers {workers}: " + "   ".join(f"{name} {rates[name]:.0f} samples/s" for name in PIPELINES)
                  + f"   ours / open_clip {rates['ours'] / rates['open_clip']:.2f}x", flush=True)

    lines = [
        "# Webdataset loader alone: ours against open_clip's pipeline (samples/s, CPU)",
        "",
        *header_lines("bench_loader.py", argv),
        f"Shards: {args.samples} JPEG samples of {args.source_size} px in {args.shards} shards, captions of 8 words; "
        f"transform: open_clip's training transform to {args.image_size} px; tokenizer: open_clip's "
        f"SimpleTokenizer (77 tokens); batch {args.batch_size}; best of {args.repeats} runs each, worker start-up "
        f"included; the two pipelines alternate within each repeat. open_clip_train 3.3's "
        f"`tarfile_to_samples_nothrow` fails on webdataset >= 1.0's end-of-shard markers (KeyError 'fname'); the "
        f"baseline drops those markers before open_clip's own grouping, and is otherwise open_clip's pipeline.",
        "",
        "| workers | ours (samples/s) | open_clip (samples/s) | ours / open_clip |",
        "|---:|---:|---:|---:|",
    ]
    for workers, best, rates in rows:
        lines.append(f"| {workers} | {rates['ours']:.0f} ({best['ours'][1]} in {best['ours'][0]:.2f} s) | "
                     f"{rates['open_clip']:.0f} ({best['open_clip'][1]} in {best['open_clip'][0]:.2f} s) | "
                     f"{rates['ours'] / rates['open_clip']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
