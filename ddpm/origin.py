"""samples.json, what `ddpm sample` writes beside its samples: the model that drew them, the settings,
and the sha256 of samples.npy and of each picture, written last, so that a set mixed by a kill
between two renames is found. Read and checked here for evaluate and compare.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ddpm.config import SampleConfig
from ddpm.errors import UserError
from ddpm.files import sha256_hex
from ddpm.layout import PICTURES, SAMPLES_ARRAY, SAMPLES_ORIGIN
from ddpm.outbox import note

DIGESTED = (SAMPLES_ARRAY, *PICTURES)  # the files of a sample folder whose sha256 samples.json records


def read_origin(samples: Path) -> dict[str, Any] | None:
    """The samples.json beside `samples`, checked to be what `ddpm sample` writes; None where there
    is none (samples drawn elsewhere)."""
    path = samples.parent / SAMPLES_ORIGIN
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        fault = _origin_fault(record)
    except (OSError, ValueError) as e:
        fault = str(e).splitlines()[0] if str(e) else type(e).__name__
    if fault:
        raise UserError(f"{path}: not what `ddpm sample` writes ({fault}); run `ddpm sample` again")
    return record


# What samples.json holds, at least, and the JSON types of each (samples.json written before
# `write_samples` has no sha256; the sample settings are SampleConfig's).
ORIGIN_KEYS = {"checkpoint": str, "run_dir": str, "model_run_id": (str, type(None)), "schedule": str,
               "image_size": int, "sample": dict}  # fmt: skip
TYPE_NAMES = {str: "a string", int: "an integer", dict: "a mapping", (str, type(None)): "a string or null"}


def _origin_fault(record: Any) -> str | None:
    """What is wrong with `record` as a samples.json, in a few words; None if nothing."""
    if not isinstance(record, dict):
        return "expected a mapping"
    missing = [key for key in ORIGIN_KEYS if key not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, kind in ORIGIN_KEYS.items():
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"{key} is {json.dumps(record[key])}, expected {TYPE_NAMES[kind]}"
    if Path(record["run_dir"]) != Path(record["checkpoint"]).parent:
        return f"run_dir {record['run_dir']} is not the folder of checkpoint {record['checkpoint']}"
    digests = record.get("sha256")  # none in a samples.json written before ddpm recorded them
    if "sha256" in record and not (isinstance(digests, dict) and all(type(digests.get(n)) is str for n in DIGESTED)):
        return f"sha256 is {json.dumps(digests)}, expected the sha256 of {', '.join(DIGESTED)}"
    try:
        SampleConfig.model_validate(record["sample"])
    except ValidationError as e:
        return f"sample: {e.errors()[0]['msg']}"
    return None


def check_samples(samples: Path, record: dict[str, Any], images: np.ndarray) -> str:
    """The sha256 of `samples` (`images`), checked against what their samples.json (`record`)
    records: a one-line error, naming the command to run again, where a kill mixed two sets."""
    digest = sha256_hex(samples)
    if "sha256" in record:
        wrong = "another sha256" if record["sha256"][SAMPLES_ARRAY] != digest else None
    else:  # written before ddpm recorded digests: the count and size are all there is to check
        note(f"{samples.parent / SAMPLES_ORIGIN} records no sha256 of {SAMPLES_ARRAY} (written before ddpm did); "
             "the samples are checked by their count and size only")  # fmt: skip
        count, size = record["sample"]["num_samples"], record["image_size"]
        wrong = f"{len(images)} images of {images.shape[3]}×{images.shape[2]}, not {count} of {size}×{size}"
        wrong = None if (len(images), *images.shape[2:]) == (count, size, size) else wrong
    if wrong:
        raise UserError(f"{samples}: not the samples {samples.parent / SAMPLES_ORIGIN} describes ({wrong}: an "
                        f"interrupted `ddpm sample`); run `ddpm sample --checkpoint {record['checkpoint']} --out "
                        f"{samples.parent}` again")  # fmt: skip
    return digest
