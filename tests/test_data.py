"""Tests for manifold_align_train.data (training/data/): embedded tasks, CSV/webdataset sources, bad samples, resumable loading."""

from __future__ import annotations

import io
import itertools
import os
import tarfile
import types

import numpy as np
import pytest
import torch
from PIL import Image

from manifold_align_train.data import (
    BadDataError,
    Batch,
    CsvDataset,
    InMemoryImageText,
    ResumableLoader,
    WebDatasetLoader,
    build_data,
    collate_skip_bad,
    make_digit_pairs,
    make_digits,
    make_synthetic,
)
from manifold_align_train.data.digit_pairs import (
    PAIR_RETRIEVAL_PHRASING,
    PAIR_TRAIN_PHRASINGS,
    pair_caption,
)
from manifold_align_train.data.digit_source import load_digit_split
from manifold_align_train.data.held_out import held_out_batches
from manifold_align_train.data.digits import RETRIEVAL_PHRASING, TRAIN_PHRASINGS, digit_caption

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def transforms():
    """``(preprocess_train, preprocess_val, tokenizer)``: open_clip's, as the trainer builds them for digits-fast."""
    import open_clip

    from manifold_align.clip import get_tokenizer

    return (open_clip.image_transform(IMAGE_SIZE, is_train=True),
            open_clip.image_transform(IMAGE_SIZE, is_train=False), get_tokenizer("digits-fast"))


def held_out(source, batch_size: int = 4):
    """A held-out source streamed: ``(images (N, 3, H, W), texts (N, L) or None, bad names)``."""
    batches = list(held_out_batches(source, batch_size))
    good = [b for b in batches if b.images is not None]
    texts = torch.cat([b.texts for b in good]) if good[0].texts is not None else None
    return torch.cat([b.images for b in good]), texts, [name for b in batches for name in b.bad]


def data_cfg(**overrides):
    cfg = dict(
        dataset="digits", train_data=None, val_data=None, csv_separator="\t", csv_img_key="filepath",
        csv_caption_key="title", caption_noise=0.0, image_size=IMAGE_SIZE, batch_size=32, workers=0,
        num_samples=None,
    )
    cfg.update(overrides)
    return types.SimpleNamespace(**cfg)


# ---------------------------------------------------------------- digits
def test_digits_sizes_and_split_are_disjoint():
    task = make_digits(IMAGE_SIZE)
    assert task.train_images.shape == (1437, IMAGE_SIZE, IMAGE_SIZE)
    assert task.test_images.shape == (360, IMAGE_SIZE, IMAGE_SIZE)
    assert task.train_images.dtype == np.uint8
    assert len(task.train_captions) == 1437 and len(task.retrieval_captions) == 360
    assert task.classnames == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    split = load_digit_split(IMAGE_SIZE)
    assert not set(split.train_index.tolist()) & set(split.test_index.tolist())
    assert len(split.train_index) + len(split.test_index) == 1797
    # stratified: every class is held out in proportion
    assert np.all(np.bincount(task.test_labels, minlength=10) >= 34)


def test_digits_are_deterministic_by_seed():
    a = make_digits(IMAGE_SIZE, seed=3, caption_noise=0.3)
    b = make_digits(IMAGE_SIZE, seed=3, caption_noise=0.3)
    c = make_digits(IMAGE_SIZE, seed=4, caption_noise=0.3)
    assert a.train_captions == b.train_captions
    np.testing.assert_array_equal(a.caption_labels, b.caption_labels)
    assert a.train_captions != c.train_captions
    np.testing.assert_array_equal(a.test_images, c.test_images)  # held-out set fixed across seeds


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.37, 1.0])
def test_caption_noise_share_is_exact_and_always_a_different_class(noise):
    task = make_digits(IMAGE_SIZE, seed=1, caption_noise=noise)
    wrong = task.caption_labels != task.train_labels
    assert int(wrong.sum()) == round(noise * len(task.train_labels))
    allowed = {digit_caption(c, p) for c in range(10) for p in TRAIN_PHRASINGS}
    for caption, named in zip(task.train_captions, task.caption_labels):
        assert caption in {digit_caption(int(named), p) for p in TRAIN_PHRASINGS}
        assert caption in allowed


def test_caption_noise_wrong_class_covers_the_nine_others():
    task = make_digits(IMAGE_SIZE, seed=2, caption_noise=1.0)
    shift = (task.caption_labels - task.train_labels) % 10
    assert set(shift.tolist()) == set(range(1, 10))


def test_caption_noise_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="caption_noise"):
        make_digits(IMAGE_SIZE, caption_noise=1.5)


def _all_training_captions(phrasings, caption, n_classes):
    return {caption(c, p) for c in range(n_classes) for p in phrasings}


def test_digit_zero_shot_prompts_differ_from_training_phrasings():
    task = make_digits(IMAGE_SIZE)
    training = _all_training_captions(TRAIN_PHRASINGS, digit_caption, 10)
    prompts = {t.format(name) for t in task.templates for name in task.classnames}
    numerals = {t.format(str(c)) for t in task.templates for c in range(10)}
    assert not prompts & training and not numerals & training
    assert not set(task.templates) & set(TRAIN_PHRASINGS)
    assert RETRIEVAL_PHRASING not in TRAIN_PHRASINGS
    assert not set(task.retrieval_captions) & training


# ---------------------------------------------------------------- digit pairs
def test_digit_pairs_have_100_classes_and_ordered_captions():
    task = make_digit_pairs(IMAGE_SIZE, train_per_class=3, test_per_class=2)
    assert len(task.classnames) == 100 and len(set(task.classnames)) == 100
    assert task.classnames[37] == "three seven" and task.classnames[73] == "seven three"
    assert task.train_images.shape == (300, IMAGE_SIZE, IMAGE_SIZE)
    assert task.test_images.shape == (200, IMAGE_SIZE, IMAGE_SIZE)
    for caption, label in zip(task.train_captions, task.train_labels):
        assert caption in {pair_caption(int(label), p) for p in PAIR_TRAIN_PHRASINGS}
    assert pair_caption(37, "{a} then {b}") == "three then seven"
    assert pair_caption(37, "{A} then {B}") == "3 then 7"
    # both halves hold a digit
    half = IMAGE_SIZE // 2
    assert task.train_images[:, :, :half].max(axis=(1, 2)).min() > 0
    assert task.train_images[:, :, half:].max(axis=(1, 2)).min() > 0


def test_digit_pairs_prompts_differ_and_are_deterministic():
    a = make_digit_pairs(IMAGE_SIZE, seed=5, caption_noise=0.2, train_per_class=2, test_per_class=1)
    b = make_digit_pairs(IMAGE_SIZE, seed=5, caption_noise=0.2, train_per_class=2, test_per_class=1)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.train_captions == b.train_captions
    assert int((a.caption_labels != a.train_labels).sum()) == round(0.2 * 200)
    training = _all_training_captions(PAIR_TRAIN_PHRASINGS, pair_caption, 100)
    prompts = {t.format(name) for t in a.templates for name in a.classnames}
    assert not prompts & training
    assert not {pair_caption(c, PAIR_RETRIEVAL_PHRASING) for c in range(100)} & training


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_tiny_and_deterministic():
    a, b = make_synthetic(16, seed=0, n_train=40), make_synthetic(16, seed=0, n_train=40)
    assert a.train_images.shape == (40, 16, 16, 3)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.train_captions == b.train_captions and len(a.classnames) == 9


@pytest.mark.parametrize("name", ["digits", "digit-pairs", "synthetic"])
def test_build_data_embedded(transforms, name):
    train, val, tok = transforms
    bundle = build_data(data_cfg(dataset=name, num_samples=64), preprocess_train=train,
                        preprocess_val=val, tokenizer=tok, seed=0)
    batch = next(iter(bundle.train))
    assert isinstance(batch, Batch)
    assert batch.images.shape == (32, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.texts.shape == (32, 16)
    assert batch.texts.dtype == torch.long and batch.n_skipped == 0
    zs = bundle.zero_shot
    assert len(zs.images) == zs.labels.shape[0] and int(zs.labels.max()) < len(zs.classnames)
    assert zs.images[0].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    images, texts, bad = held_out(bundle.retrieval.pairs, batch_size=64)
    assert images.shape[0] == texts.shape[0] == len(bundle.retrieval.labels) and not bad
    assert bundle.steps_per_epoch == len(bundle.train) > 0 and name in bundle.description
    assert not bundle.train.pin_memory
    pinned = build_data(data_cfg(dataset=name, num_samples=64), preprocess_train=train, preprocess_val=val,
                        tokenizer=tok, seed=0, pin_memory=True)
    assert pinned.train.pin_memory  # reaches the DataLoader (iterating it needs a GPU)


def test_unknown_dataset_names_the_field_and_choices(transforms):
    train, val, tok = transforms
    with pytest.raises(ValueError, match=r"`data.dataset`.*digit-pairs.*webdataset"):
        build_data(data_cfg(dataset="imagenet"), preprocess_train=train, preprocess_val=val,
                   tokenizer=tok, seed=0)


# ---------------------------------------------------------------- bad samples
def test_collate_skip_bad_counts_and_raises_with_names():
    item = (torch.zeros(3, 4, 4), torch.ones(5, dtype=torch.long))
    batch = collate_skip_bad([item, None, item])
    assert batch.images.shape == (2, 3, 4, 4) and batch.texts.shape == (2, 5) and batch.n_skipped == 1
    with pytest.raises(BadDataError, match="broken.png"):
        collate_skip_bad([None, None], sources=["broken.png", "gone.jpg"])


def _write_png(path, value):
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def _write_csv(folder, rows, name="train.tsv"):
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        handle.write("filepath\ttitle\n")
        for filepath, title in rows:
            handle.write(f"{filepath}\t{title}\n")
    return path


@pytest.fixture()
def csv_folder(tmp_path):
    os.makedirs(tmp_path / "img")
    rows = []
    for i in range(6):
        _write_png(tmp_path / "img" / f"{i}.png", 20 * i)
        rows.append((f"img/{i}.png", f"a grey square number {i}"))
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows.append(("img/corrupt.png", "a corrupt file"))
    rows.append(("img/missing.png", "a missing file"))
    rows.append(("img/0.png", "   "))
    return tmp_path, rows


class _CountingBad(torch.utils.data.Dataset):
    """Wraps a dataset and counts every time it hands out a bad item (``None``)."""

    def __init__(self, dataset):
        self.dataset, self.bad_hits = dataset, 0

    def __len__(self):
        return len(self.dataset)

    def source(self, index):
        return self.dataset.source(index)

    def __getitem__(self, index):
        item = self.dataset[index]
        self.bad_hits += item is None
        return item


def _csv_dataset(transforms, folder, rows):
    return CsvDataset(_write_csv(folder, rows), transforms[0], transforms[2])


def test_csv_bad_samples_are_replaced_and_each_hit_counted(transforms, csv_folder):
    folder, rows = csv_folder
    dataset = _csv_dataset(transforms, folder, rows)
    assert len(dataset) == 9
    assert dataset[6] is None and dataset[7] is None and dataset[8] is None
    assert dataset[0][0].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    counting = _CountingBad(dataset)
    loader = ResumableLoader(counting, 4, seed=0)
    for epoch in range(4):  # training continues across epochs
        for b, batch in enumerate(loader.epoch_batches(epoch)):
            assert batch.images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.texts.shape[0] == 4
            bad_slots = sum(i >= 6 for i in loader.batch_indices(epoch, b))
            assert batch.n_skipped >= bad_slots
            if bad_slots == 0:
                assert batch.n_skipped == 0
    assert loader.n_skipped_total == counting.bad_hits > 0


def test_csv_n_skipped_equals_bad_hits_per_batch(transforms, csv_folder):
    folder, rows = csv_folder
    counting = _CountingBad(_csv_dataset(transforms, folder, rows))
    loader = ResumableLoader(counting, 9, seed=0)  # one batch holding every row, every epoch
    for epoch in range(2):
        hits_before = counting.bad_hits
        (batch,) = loader.epoch_batches(epoch)
        assert batch.images.shape[0] == 9
        assert batch.n_skipped == counting.bad_hits - hits_before >= 3  # each bad row at least once


def test_csv_replacement_is_deterministic_across_loaders_workers_and_resume(transforms, csv_folder):
    folder, rows = csv_folder
    dataset = _csv_dataset(transforms, folder, rows)
    first = list(itertools.islice(iter(ResumableLoader(dataset, 4, seed=7)), 6))
    second = list(itertools.islice(iter(ResumableLoader(dataset, 4, seed=7)), 6))
    parallel = list(ResumableLoader(dataset, 4, seed=7, workers=2).epoch_batches(1))
    resumed = ResumableLoader(dataset, 4, seed=7)
    resumed.set_position(1, 1)
    for a, b in zip(first, second):
        _same(a, b)
        assert a.n_skipped == b.n_skipped
    for a, b in zip(first[2:4], parallel):
        _same(a, b)
        assert a.n_skipped == b.n_skipped
    _same(first[3], next(iter(resumed)))
    assert sum(b.n_skipped for b in first) > 0  # the bad rows were hit


def test_csv_replacement_keeps_rank_slices_equal_to_the_single_process_batch(transforms, csv_folder):
    folder, rows = csv_folder
    dataset = _csv_dataset(transforms, folder, rows)
    single = ResumableLoader(dataset, 4, seed=2)
    ranks = [ResumableLoader(dataset, 4, seed=2, rank=r, world_size=2) for r in range(2)]
    skipped = 0
    for epoch in range(3):
        for whole, part0, part1 in zip(*(loader.epoch_batches(epoch) for loader in [single, *ranks])):
            assert part0.images.shape[0] == part1.images.shape[0] == 2  # same rows on every rank
            _same(whole, Batch(torch.cat([part0.images, part1.images]), torch.cat([part0.texts, part1.texts])))
            assert whole.n_skipped == part0.n_skipped + part1.n_skipped
            skipped += whole.n_skipped
    assert skipped > 0


def test_csv_one_good_row_is_enough_to_keep_batches_full(transforms, csv_folder):
    folder, rows = csv_folder
    dataset = _csv_dataset(transforms, folder, rows[6:9] + rows[:1])
    batches = list(ResumableLoader(dataset, 2, seed=0).epoch_batches(0))
    assert len(batches) == 2 and all(b.images.shape[0] == 2 for b in batches)
    assert sum(b.n_skipped for b in batches) >= 3


def test_csv_build_data_with_val_retrieval(transforms, csv_folder):
    folder, rows = csv_folder
    train, val, tok = transforms
    cfg = data_cfg(dataset="csv", train_data=_write_csv(folder, rows), batch_size=3,
                   val_data=_write_csv(folder, rows, "val.tsv"))
    bundle = build_data(cfg, preprocess_train=train, preprocess_val=val, tokenizer=tok, seed=0)
    assert bundle.steps_per_epoch == 3 and bundle.zero_shot is None
    assert held_out(bundle.retrieval.pairs)[0].shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE)
    batches = list(bundle.train.epoch_batches(0))
    assert all(b.images.shape[0] == 3 for b in batches)
    assert sum(b.n_skipped for b in batches) >= 3  # all 9 rows are used, the 3 bad ones replaced


@pytest.mark.parametrize("workers", [0, 2])
def test_csv_all_bad_source_raises_naming_the_files(transforms, csv_folder, workers):
    folder, rows = csv_folder
    loader = ResumableLoader(_csv_dataset(transforms, folder, rows[6:9]), 2, seed=0, workers=workers)
    with pytest.raises(BadDataError, match=r"corrupt\.png") as info:
        next(iter(loader))
    assert "missing.png" in str(info.value) and "0.png" in str(info.value)


def test_csv_missing_column_is_a_clear_error(transforms, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("path,caption\na.png,hi\n")
    with pytest.raises(ValueError, match="csv_img_key"):
        CsvDataset(str(path), transforms[0], transforms[2], sep=",")


# ---------------------------------------------------------------- webdataset
def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path, start, n, corrupt=False):
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            buffer = io.BytesIO()
            Image.fromarray(np.full((10, 10, 3), 10 * i % 255, np.uint8)).save(buffer, format="PNG")
            _add(tar, f"{i:05d}.png", buffer.getvalue())
            _add(tar, f"{i:05d}.txt", f"sample number {i}".encode())
        if corrupt:
            _add(tar, "99999.jpg", b"\xff\xd8\xff garbage, not a jpeg")
            _add(tar, "99999.txt", b"a corrupt image")


def test_webdataset_skips_corrupt_images(transforms, tmp_path):
    train, val, tok = transforms
    _write_shard(tmp_path / "shard-0.tar", 0, 6, corrupt=True)
    _write_shard(tmp_path / "shard-1.tar", 6, 6)
    pattern = str(tmp_path / "shard-{0..1}.tar")
    loader = WebDatasetLoader(pattern, train, tok, 4, seed=0, shuffle_buffer=4)
    assert loader.num_samples == 13 and loader.steps_per_epoch == 3
    batches = list(loader.epoch_batches(0))
    assert len(batches) == 3 and all(b.images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) for b in batches)
    assert sum(b.n_skipped for b in batches) == 1
    again = list(loader.epoch_batches(0, start=1))  # best-effort resume replays the epoch
    torch.testing.assert_close(again[0].texts, batches[1].texts)
    bundle = build_data(
        data_cfg(dataset="webdataset", train_data=pattern, val_data=pattern, batch_size=4, num_samples=8),
        preprocess_train=train, preprocess_val=val, tokenizer=tok, seed=0,
    )
    assert bundle.steps_per_epoch == 2 and held_out(bundle.retrieval.pairs)[0].shape[0] == 12
    assert not bundle.train.pin_memory
    pinned = build_data(data_cfg(dataset="webdataset", train_data=pattern, batch_size=4, num_samples=8),
                        preprocess_train=train, preprocess_val=val, tokenizer=tok, seed=0, pin_memory=True)
    assert pinned.train.pin_memory  # reaches the DataLoader (iterating it needs a GPU)


def _write_bad_shard(path, start, n):
    """``n`` good PNG samples from ``start`` on, then one of each kind of bad sample; returns the bad keys."""
    _write_shard(path, start, n)
    with tarfile.open(path, "a") as tar:
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(buffer, format="PNG")
        _add(tar, "90000.png", buffer.getvalue())
        _add(tar, "90000.txt", b"   ")  # empty caption
        _add(tar, "90001.png", buffer.getvalue())  # no caption member
        _add(tar, "90002.png", b"\x89PNG\r\n\x1a\n truncated")  # unreadable image
        _add(tar, "90002.txt", b"a corrupt image")
        _add(tar, "90003.txt", b"a caption without an image")
    return {f"{path}:{key}" for key in ("90000", "90001", "90002", "90003")}


def test_webdataset_batches_stay_full_and_name_each_distinct_bad_sample(transforms, tmp_path):
    train, _, tok = transforms
    bad = _write_bad_shard(tmp_path / "shard-0.tar", 0, 5) | _write_bad_shard(tmp_path / "shard-1.tar", 5, 5)
    loader = WebDatasetLoader(str(tmp_path / "shard-{0..1}.tar"), train, tok, 4, num_samples=12, seed=0,
                              shuffle_buffer=4)
    seen = []
    for epoch in range(6):  # each epoch meets most of the bad samples, every order differs
        batches = list(loader.epoch_batches(epoch))
        assert len(batches) == 3
        for batch in batches:
            assert batch.images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.texts.shape[0] == 4
            assert batch.n_skipped == len(batch.bad)
            seen.extend(batch.bad)
    # every encounter is counted; the distinct ones are the 8 bad samples, named by shard and key
    assert loader.n_skipped_total == len(seen) > len(bad)
    assert loader.bad_sources == set(seen) == bad


def test_webdataset_full_batches_with_a_failing_transform_and_workers(transforms, tmp_path):
    train, _, tok = transforms

    def picky(image):  # fails on the darkest images, like a transform choking on a bad file
        if image.getpixel((0, 0))[0] < 30:
            raise ValueError("too dark")
        return train(image)

    _write_shard(tmp_path / "shard-0.tar", 0, 10)
    _write_shard(tmp_path / "shard-1.tar", 10, 10)
    loader = WebDatasetLoader(str(tmp_path / "shard-{0..1}.tar"), picky, tok, 4, num_samples=16, seed=0,
                              workers=2, shuffle_buffer=0)
    batches = list(loader.epoch_batches(0))
    assert len(batches) == 4 and all(b.images.shape[0] == 4 for b in batches)
    assert loader.bad_sources == {f"{tmp_path}/shard-0.tar:{i:05d}" for i in range(3)}


def test_webdataset_validation_counts_its_bad_samples(transforms, tmp_path):
    train, val, tok = transforms
    bad = _write_bad_shard(tmp_path / "val.tar", 0, 5)
    bundle = build_data(
        data_cfg(dataset="webdataset", train_data=str(tmp_path / "val.tar"), val_data=str(tmp_path / "val.tar"),
                 batch_size=4, num_samples=4),
        preprocess_train=train, preprocess_val=val, tokenizer=tok, seed=0,
    )
    images, _, names = held_out(bundle.retrieval.pairs)
    assert images.shape[0] == 5 and set(names) == bad


def test_csv_bad_rows_are_named_by_file_line_and_counted_once_each(transforms, csv_folder):
    folder, rows = csv_folder
    dataset = _csv_dataset(transforms, folder, rows)
    path = os.path.join(folder, "train.tsv")
    # row 8 (0-based) is line 10 of the file: the header is line 1
    assert dataset.source(8) == f"{folder}/img/0.png ({path} line 10)"
    loader = ResumableLoader(dataset, 3, seed=0)
    for epoch in range(5):
        list(loader.epoch_batches(epoch))
    assert loader.n_skipped_total > 3
    assert sorted(loader.bad_sources) == sorted(dataset.source(i) for i in (6, 7, 8))


def test_csv_line_numbers_follow_multiline_captions_and_blank_lines(transforms, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('filepath,title\na.png,"two\nlines"\n\nb.png,\n')
    dataset = CsvDataset(str(path), transforms[0], transforms[2], sep=",")
    assert dataset.lines == [2, 5]


def test_csv_validation_counts_its_bad_rows(transforms, csv_folder):
    folder, rows = csv_folder
    train, val, tok = transforms
    cfg = data_cfg(dataset="csv", train_data=_write_csv(folder, rows), batch_size=3,
                   val_data=_write_csv(folder, rows, "val.tsv"))
    bundle = build_data(cfg, preprocess_train=train, preprocess_val=val, tokenizer=tok, seed=0)
    names = held_out(bundle.retrieval.pairs)[2]
    assert len(names) == 3 and all("val.tsv line" in name for name in names)


# ---------------------------------------------------------------- resumable loader
@pytest.fixture(scope="module")
def small_dataset(transforms):
    task = make_synthetic(IMAGE_SIZE, seed=0, n_train=48)
    return InMemoryImageText(task.train_images, task.train_captions, transforms[0], transforms[2])


class _PlainPairs(torch.utils.data.Dataset):
    """``n`` items ``(image, tokens)`` made without transforms (torchvision's random crops read tensors)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return torch.full((3, 2, 2), float(index)), torch.tensor([index, 1, 0])


def test_the_loader_reads_no_tensor_per_sample():
    """The epoch order is indexed without tensor reads: at most one per epoch (the DataLoader's base
    seed, drawn with ``.item()`` when its iterator starts), whatever the number of samples."""
    from test_host_reads import counting_reads

    loader = ResumableLoader(_PlainPairs(64), 8, seed=0)
    with counting_reads() as reads:
        batches = list(loader.epoch_batches(0))
    assert len(reads) <= 1, reads
    assert len(batches) == 8
    indices = torch.cat([b.texts[:, 0] for b in batches])
    assert sorted(indices.tolist()) == list(range(64))
    assert torch.equal(indices, torch.tensor([i for b in range(8) for i in loader.batch_indices(0, b)]))


def _same(a: Batch, b: Batch):
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    torch.testing.assert_close(a.texts, b.texts, rtol=0, atol=0)


def test_resume_yields_the_identical_remaining_batches(small_dataset):
    reference = ResumableLoader(small_dataset, 8, seed=11)
    assert reference.steps_per_epoch == 6
    expected = list(itertools.islice(iter(reference), 15))  # crosses two epoch boundaries
    first = ResumableLoader(small_dataset, 8, seed=11)
    it = iter(first)
    for _ in range(8):
        next(it)
    saved = first.position()
    assert saved == (1, 2)
    resumed = ResumableLoader(small_dataset, 8, seed=11)
    resumed.set_position(*saved)
    for want, got in zip(expected[8:], itertools.islice(iter(resumed), 7)):
        _same(want, got)
    assert resumed.position() == (2, 3)


def test_epochs_differ_and_seed_matters(small_dataset):
    loader = ResumableLoader(small_dataset, 8, seed=0)
    assert loader.batch_indices(0, 0) != loader.batch_indices(1, 0)
    assert loader.batch_indices(0, 0) == ResumableLoader(small_dataset, 8, seed=0).batch_indices(0, 0)
    epoch = [i for b in range(6) for i in loader.batch_indices(0, b)]
    assert sorted(epoch) == list(range(48))


def test_rank_batches_concatenate_to_the_single_process_batch(small_dataset):
    single = ResumableLoader(small_dataset, 8, seed=3)
    ranks = [ResumableLoader(small_dataset, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].local_batch_size == 4
    for whole, part0, part1 in zip(single.epoch_batches(1), ranks[0].epoch_batches(1), ranks[1].epoch_batches(1)):
        _same(whole, Batch(torch.cat([part0.images, part1.images]), torch.cat([part0.texts, part1.texts]), 0))


def test_batch_size_must_divide_by_world_size(small_dataset):
    with pytest.raises(ValueError, match="world_size"):
        ResumableLoader(small_dataset, 9, seed=0, world_size=2)


def test_two_workers_give_the_same_batches(small_dataset):
    serial = list(ResumableLoader(small_dataset, 16, seed=5).epoch_batches(0))
    parallel = list(ResumableLoader(small_dataset, 16, seed=5, workers=2).epoch_batches(0))
    assert len(parallel) == 3
    for a, b in zip(serial, parallel):
        _same(a, b)


def test_items_are_seeded_on_the_cpu_generator_alone(small_dataset, monkeypatch):
    """Loading seeds only torch's CPU generator (what the transforms draw from), with the same batches:
    ``torch.manual_seed`` per item also seeded every accelerator, queuing each call with a formatted stack
    trace where CUDA is not initialized (about 1 ms an item: it made the loader 2.7x slower than open_clip's)."""
    expected = list(ResumableLoader(small_dataset, 16, seed=5).epoch_batches(0))
    monkeypatch.setattr(torch, "manual_seed", lambda seed: pytest.fail("torch.manual_seed called while loading"))
    for a, b in zip(expected, ResumableLoader(small_dataset, 16, seed=5).epoch_batches(0)):
        _same(a, b)


def test_webdataset_worker_batches_are_stacked_in_shared_memory():
    from manifold_align_train.data.webdataset_source import _stack

    images = [torch.randn(3, 5, 5) for _ in range(4)]
    shared = _stack(images, shared=True)
    assert shared.is_shared() and shared.shape == (4, 3, 5, 5)
    assert torch.equal(shared, torch.stack(images))
    assert not _stack(images, shared=False).is_shared()
