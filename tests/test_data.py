import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.data import InMemoryImages, load_images, save_images, synthetic_flowers, to_uint8, to_unit_range
from ddpm.errors import UserError
from ddpm.files import atomic_output


def test_synthetic_flowers_are_deterministic_and_prefix_stable() -> None:
    a = synthetic_flowers(6, 32, seed=3)
    assert a.dtype == np.uint8 and a.shape == (6, 3, 32, 32)
    assert np.array_equal(a, synthetic_flowers(6, 32, seed=3))
    assert np.array_equal(a[:4], synthetic_flowers(4, 32, seed=3))
    assert not np.array_equal(a, synthetic_flowers(6, 32, seed=4))
    assert len({img.tobytes() for img in a}) == 6


def test_uint8_round_trip() -> None:
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = to_unit_range(images)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), images)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_save_load_round_trip_and_errors(tmp_path: Path) -> None:
    images = synthetic_flowers(3, 16)
    save_images(tmp_path / "a.npy", images)
    assert np.array_equal(load_images(tmp_path / "a.npy"), images)
    np.save(tmp_path / "f.npy", images.astype(np.float32))
    with pytest.raises(UserError, match=r"f.npy: holds float32 \(3, 3, 16, 16\); expected a .npy file of uint8"):
        load_images(tmp_path / "f.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"junk.npy: not a .npy file; expected a .npy file of uint8 images shaped"):
        load_images(tmp_path / "junk.npy")  # numpy's own message took it for a pickle, to load "if you trust" it
    (tmp_path / "cut.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:20])
    with pytest.raises(UserError, match=r"cut.npy: cannot read \(EOF: reading array header"):
        load_images(tmp_path / "cut.npy")
    with pytest.raises(UserError, match="missing.npy: not found"):
        load_images(tmp_path / "missing.npy")


def test_batches_are_flipped_copies_in_unit_range() -> None:
    images = synthetic_flowers(2, 16)
    dataset = InMemoryImages(images, torch.device("cpu"))
    batch = dataset.batch(400, torch.Generator().manual_seed(0))
    assert batch.shape == (400, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    originals = to_unit_range(torch.from_numpy(images))
    flipped = [any(torch.equal(b, o.flip(2)) for o in originals) for b in batch]
    plain = [any(torch.equal(b, o) for o in originals) for b in batch]
    assert all(f or p for f, p in zip(flipped, plain, strict=True))
    assert 150 < sum(flipped) < 250  # about half are flipped


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "new.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0600
