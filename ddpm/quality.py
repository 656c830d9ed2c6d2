"""Quality during training: FID_N and KID of the EMA model's samples every `train.eval_every` steps
and at the last one, so that a schedule that converges faster and one that ends better can be told apart.

At each point `train.eval_samples` samples are drawn with DDIM (`train.eval_steps` steps, η = 0, the
spacing, clipping, precision and batch size of sample.*) from x_T drawn by a generator seeded `sample.seed`, as
`ddpm sample` draws them: every point of every run starts from the same x_T, so two curves differ by
their models alone (paired). The features come from the evaluate stage's extractor
(evaluate.feature_extractor, resize, weights), the real images' from its cache (layout.FEATURE_CACHE),
computed at most once per dataset. The names carry the extractor's suffix: fid_randconv is not FID.

Nothing here touches the training run's random streams: the samples draw on their own generator, and
what building the extractor draws (nn.Conv2d's initialisation) comes from a forked stream; so a run with
quality on trains the same weights as one without, and a resumed run measures the same numbers.
"""

from pathlib import Path

import torch

from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.errors import UserError
from ddpm.features import extract_features, load_extractor, metric_suffix, real_features
from ddpm.files import write_bytes
from ddpm.metrics import frechet_distance, kernel_distance
from ddpm.sample import generate
from ddpm.spacing import timesteps
from ddpm.state import Record


class QualityProbe:
    """The quality points of one run: measured into the run's Record (saved with every checkpoint, so a
    resume drops the points past its step and measures them again) and written to quality.csv."""

    def __init__(
        self, config: Config, real_path: Path, digest: str, cache_dir: Path, device: torch.device, csv: Path
    ) -> None:
        self.cfg, self.device, self.csv = config.train, device, csv
        self.image_size = config.data.image_size
        s = metric_suffix(config.evaluate.feature_extractor)
        # FID last: DVC plots the last column where dvc.yaml names none, and its name depends on the extractor
        self.columns = ("step", f"kid{s}", f"fid{s}")
        # the samples as `ddpm sample` draws them, DDIM at η = 0; eager: a compile would cost more than it saves
        self.sampling = config.sample.model_copy(update={
            "sampler": "ddim", "steps": self.cfg.eval_steps, "eta": 0.0, "num_samples": self.cfg.eval_samples,
            "compile": False,
        })  # fmt: skip
        self.batch_size = config.evaluate.batch_size
        if not self.cfg.eval_every:
            return
        try:  # now, not at the first point, hours into the run
            timesteps("ddim", self.sampling.spacing, self.cfg.eval_steps, config.diffusion.timesteps)
        except ValueError as e:
            raise UserError(f"train.eval_steps, sample.spacing (DDIM, diffusion.timesteps = "
                            f"{config.diffusion.timesteps}): {e}") from None  # fmt: skip
        # loaded now, not at the first point: a missing Inception fails before hours of training, not after
        with _own_random_streams(device):
            try:
                self.extractor = load_extractor(config.evaluate, device)
            except UserError as e:
                raise UserError(f"quality during training (train.eval_every): {e}; or set train.eval_every=0") from None
            digest = digest.removeprefix("sha256:")
            self.real, _ = real_features(self.extractor, real_path, digest, self.batch_size, cache_dir, device, False)

    def due(self, step: int) -> bool:
        every = self.cfg.eval_every
        return every > 0 and (step % every == 0 or step == self.cfg.steps)

    def measure(self, step: int, model: Model, diffusion: GaussianDiffusion, record: Record) -> dict[str, float]:
        """FID_N and KID of the EMA `model`'s samples at `step`: added to `record` and quality.csv; returned."""
        with _own_random_streams(self.device):
            images, _ = generate(model, diffusion, self.sampling, self.image_size, self.device, progress=False)
            fake = extract_features(self.extractor, images.numpy(), self.batch_size, self.device, "", False)
        kid, fid = self.columns[1:]
        # FID on the host, as `ddpm evaluate` computes it; KID's float64 kernels (7,689² for Flowers) on the device
        kid_value = kernel_distance(self.real.to(self.device), fake.to(self.device))
        scores = {fid: frechet_distance(self.real, fake), kid: kid_value}
        record.quality.append({"step": step, **scores})
        self.write(record)
        return scores

    def write(self, record: Record) -> None:
        """quality.csv: the record's points, rewritten whole (atomically); just the header with none."""
        rows = [",".join(repr(row[name]) for name in self.columns) + "\n" for row in record.quality]
        write_bytes(self.csv, (",".join(self.columns) + "\n" + "".join(rows)).encode())


def _own_random_streams(device: torch.device) -> torch.random.fork_rng:
    """The global generators (CPU and the device's) restored on leaving: what is drawn inside is not the run's."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
