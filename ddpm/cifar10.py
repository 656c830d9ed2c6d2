"""CIFAR-10's python batches, read without running anything: a restricted unpickler that builds
dicts of bytes, lists and numpy arrays, and nothing else."""

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy ≥ 2 moved it; pickles name either place
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct

from ddpm.errors import UserError

CIFAR10_BATCHES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]  # the 50,000 training images


def cifar10_training_images(root: Path, image_size: int) -> np.ndarray:
    """CIFAR-10's training images as published (the python version's five batches, in order), uint8
    (50000, 3, 32, 32): FID's reference set for CIFAR-10 models, so they are never resized."""
    if image_size != 32:
        raise UserError(f"data.image_size: CIFAR-10's images are 32×32, got {image_size}; set --image-size 32")
    arrays = []
    for name in CIFAR10_BATCHES:
        path = root / name
        if not path.is_file():
            raise UserError(f"{path}: not found; run `ddpm download --source cifar10` first")
        try:
            with open(path, "rb") as f:
                batch = _ArraysOnly(f, encoding="bytes").load()
            data = batch[b"data"]
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
            raise UserError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise UserError(
                f"{path}: its data is not uint8 rows of 3 × 32 × 32 values, as CIFAR-10's python batches hold"
            )
        arrays.append(data.reshape(-1, 3, 32, 32))  # each row: the red plane, then green, then blue, row-major
    return np.concatenate(arrays)


class _ArrayType:
    """What a batch gets for numpy.ndarray: the argument a pickle of an array gives `_reconstruct`,
    never called itself (ndarray(shape) would allocate any size a file asks for)."""

    def __call__(self, *args: Any) -> None:
        raise pickle.UnpicklingError("it calls numpy.ndarray, which a pickle of an array never does")


def _empty_array(array_type: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's `_reconstruct` as a pickle of an array calls it, for an empty array that __setstate__
    then fills from the file's own bytes; any other call (a shape asking for terabytes) is refused."""
    if not isinstance(array_type, _ArrayType) or shape != (0,) or typecode != b"b":
        raise pickle.UnpicklingError(f"it calls numpy's _reconstruct with {shape!r}, not as a pickle of an array does")
    return _reconstruct(np.ndarray, (0,), b"b")


def _latin1(text: Any, encoding: Any) -> bytes:
    """`codecs.encode` as Python 3 pickles bytes at protocol 2 calls it: text in latin1, no other codec."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"it encodes text as {encoding!r}, where a pickle of bytes uses latin1")
    return codecs.encode(text, "latin1")


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's batches are pickles of dicts of bytes, lists and numpy arrays: unpickle those and
    nothing else. A file that names any other callable is refused before it is called, and the
    callables allowed take only the arguments such pickles give them."""

    ALLOWED = {
        ("numpy", "ndarray"): _ArrayType(),
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _empty_array,
        ("numpy._core.multiarray", "_reconstruct"): _empty_array,
        ("_codecs", "encode"): _latin1,  # bytes, as Python 3 pickles them at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not data; refused without running it")
        return self.ALLOWED[module, name]
