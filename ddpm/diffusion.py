"""Gaussian diffusion (Ho et al. 2020): the forward process, the training loss, three samplers (DDPM,
DDIM, DPM-Solver++; with four ways of keeping the predicted x_0 in range) and the variational bound
in bits per dimension.

Equation numbers refer to Ho et al. 2020 (DDPM) unless another paper is named. Every
constant is computed once in float64 and stored as a buffer, so it follows `.to(device)`;
`extract` gathers the value for each sample's timestep and casts it to the data's dtype.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

Prediction = Literal["eps", "x0", "v"]
Variance = Literal["fixed_large", "fixed_small"]
# How training weighs each sample's squared error: not at all (L_simple), or by Min-SNR-γ (Hang et al. 2023)
LossWeighting = Literal["none", "min_snr"]
MIN_SNR_GAMMA = 5.0  # Hang et al. 2023's default γ, which they found robust across settings
# The reverse variance: fixed (the sampler's `Variance`, the bound's), or learned by the model between
# beta~_t and beta_t (Nichol & Dhariwal 2021, section 3.1: "learned_range", improved-diffusion's name)
ModelVariance = Literal["fixed", "learned_range"]
HYBRID_LAMBDA = 0.001  # Nichol & Dhariwal 2021, section 3.1: L_hybrid = L_simple + λ·L_vlb
# How a sampler keeps the predicted x_0 in the data range [-1, 1] (`denoise`): clip it and recompute eps
# from the clipped x_0 (improved-diffusion's DDIM), clip it where it enters the mean and keep the model's
# eps (diffusers' clip_sample), Imagen's dynamic thresholding, or leave it.
ClipMode = Literal["recompute", "x0", "dynamic", "none"]
CLIP_MODES: tuple[ClipMode, ...] = ("recompute", "x0", "dynamic", "none")
DYNAMIC_PERCENTILE = 0.995  # Saharia et al. 2022 (Imagen), section 2.3: the p of dynamic thresholding
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] for each sample, cast to x's dtype and shaped (B, 1, ..., 1) to broadcast against x."""
    return a.gather(0, t).to(x.dtype).reshape(t.shape[0], *((1,) * (x.dim() - 1)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats, elementwise (the arguments broadcast):
    ½·(logvar2 − logvar1 + e^(logvar1 − logvar2) + (mean1 − mean2)²·e^(−logvar2) − 1)."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) in nats, elementwise, for data x in [-1, 1] on the 256-level grid (bin width 2/255) under
    N(mean, e^(2·log_scale)) discretized into its 256 bins, the outer two reaching −∞ and +∞ (eq. 13).

    Each bin's mass is taken from the exact normal CDF in log space: the first bin's is log Φ at its
    upper edge, the last bin's the log survival function at its lower edge, and a middle bin's
    log(Φ(upper) − Φ(lower)) is computed on the side of the mean where both CDFs are small, so a bin
    far out in either tail keeps its (tiny) mass instead of rounding to log 0.
    """
    inv_scale = torch.exp(-log_scale)
    upper = (x - mean + 1 / 255) * inv_scale
    lower = (x - mean - 1 / 255) * inv_scale
    # Φ(upper) − Φ(lower) = Φ(−lower) − Φ(−upper): above the mean, use the mirrored bin
    above = lower + upper > 0
    high = torch.where(above, -lower, upper)
    low = torch.where(above, -upper, lower)
    log_high = torch.special.log_ndtr(high)
    log_middle = log_high + _log1mexp(torch.special.log_ndtr(low) - log_high)
    return torch.where(
        x < -0.999,
        torch.special.log_ndtr(upper),
        torch.where(x > 0.999, torch.special.log_ndtr(-lower), log_middle),
    )


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 − e^a) for a ≤ 0, accurate at both ends (Mächler 2012)."""
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    """(B, ...) nats → (B,) bits per dimension: the mean over all but the first axis, over ln 2."""
    return nats.flatten(1).mean(1) / math.log(2)


def dynamic_threshold(x0: torch.Tensor, percentile: float = DYNAMIC_PERCENTILE) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3): per sample, s = the `percentile`
    quantile of |x̂_0| over all its pixels and channels, at least 1; x̂_0 → clip(x̂_0, −s, s)/s. Where
    s = 1 this is plain clipping; past it the sample is shrunk into [-1, 1] rather than saturated."""
    s = torch.quantile(x0.flatten(1).abs(), percentile, dim=1).clamp(min=1)
    s = s.reshape(-1, *((1,) * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class NLLTerms(NamedTuple):
    """The variational bound of eq. 5 per image, in bits per dimension."""

    prior: torch.Tensor  # (B,) L_T = KL(q(x_T | x_0) || N(0, I))
    terms: torch.Tensor  # (B, T) terms[:, t] is L_t at 0-based t: L_0 = −log p(x_0 | x_1), then the KLs
    total: torch.Tensor  # (B,) prior + terms.sum(1): the negative log-likelihood's upper bound


class GaussianDiffusion(nn.Module):
    """The diffusion process defined by `betas` (float64, shape (T,)), for a model predicting `prediction`.

    Timesteps are 0-based: t = 0 is the paper's t = 1, the first noising step. With `variance`
    learned_range the model's output has twice the images' channels: the first half the target, the
    second v, which sets the reverse variance (`learned_log_variance`).
    """

    def __init__(self, betas: torch.Tensor, prediction: Prediction = "eps", variance: ModelVariance = "fixed") -> None:
        super().__init__()
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"unknown prediction target {prediction!r}; expected one of: eps, x0, v")
        if variance not in ("fixed", "learned_range"):
            raise ValueError(f"unknown variance {variance!r}; expected one of: fixed, learned_range")
        self.prediction = prediction
        self.variance = variance
        self.num_timesteps = betas.shape[0]
        betas = betas.to(torch.float64)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        register = self.register_buffer
        register("betas", betas)
        register("alphas_cumprod", alphas_cumprod)
        register("alphas_cumprod_prev", alphas_cumprod_prev)
        # forward process q(x_t | x_0), eq. 4
        register("sqrt_alphas_cumprod", alphas_cumprod.sqrt())
        register("sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt())
        register("log_one_minus_alphas_cumprod", torch.log1p(-alphas_cumprod))
        # x_0 from x_t and eps, inverting eq. 4
        register("sqrt_recip_alphas_cumprod", (1 / alphas_cumprod).sqrt())
        register("sqrt_recipm1_alphas_cumprod", (1 / alphas_cumprod - 1).sqrt())
        # posterior q(x_{t-1} | x_t, x_0), eqs. 6-7
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        register("posterior_variance", posterior_variance)
        register("posterior_mean_coef1", betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod))
        register("posterior_mean_coef2", (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod))
        # log-variances of p(x_{t-1} | x_t) in the bound, eq. 5. At t = 0 the posterior is the point mass
        # at x_0 (beta~ = 0, log −inf) but the decoder L_0 needs a finite width: both take beta~ of the
        # next step there, as improved-diffusion does (for fixed_large too, so the decoders agree).
        first = posterior_variance[1:2]
        register("posterior_log_variance_clipped", torch.cat([first, posterior_variance[1:]]).log())
        register("log_betas_clipped", torch.cat([first, betas[1:]]).log())

    # --- forward process ---------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(√alphā_t·x_0, (1 − alphā_t)·I), eq. 4. Shapes: (B, ...), (B,), like x0."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the posterior q(x_{t-1} | x_t, x_0), eqs. 6-7."""
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, extract(self.posterior_variance, t, x_t)

    # --- conversions between the model's target, x_0 and eps ----------------------------------

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t − √(1 − alphā_t)·eps) / √alphā_t, eq. 4 solved for x_0."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t − √alphā_t·x_0) / √(1 − alphā_t), eq. 4 solved for eps: finite at alphā_t = 0 (zero
        terminal SNR), where the form through 1/√alphā_t is inf/inf."""
        return (x_t - extract(self.sqrt_alphas_cumprod, t, x_t) * x0) / extract(
            self.sqrt_one_minus_alphas_cumprod, t, x_t
        )

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model learns to predict: eps, x_0, or v = √alphā_t·eps − √(1 − alphā_t)·x_0 (Salimans & Ho 2022)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * noise - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_0 implied by the model's output at (x_t, t)."""
        if self.prediction == "eps":
            return self.predict_x0_from_eps(x_t, t, model_output)
        if self.prediction == "x0":
            return model_output
        # v-prediction: x_0 = √alphā_t·x_t − √(1 − alphā_t)·v
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * model_output
        )

    def predict_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps implied by the model's output at (x_t, t); for v, eps = √alphā_t·v + √(1 − alphā_t)·x_t."""
        if self.prediction == "eps":
            return model_output
        if self.prediction == "x0":
            return self.predict_eps_from_x0(x_t, t, model_output)
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t) * model_output
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
        )

    def denoise(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, clip_mode: ClipMode
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, epŝ) at (x_t, t) for a sampler, x̂_0 kept in the data range [-1, 1] as `clip_mode` says:

        - recompute: x̂_0 clipped, epŝ recomputed from it, so that the two stay consistent
          (improved-diffusion). Where x̂_0 saturates (early, where 1/√alphā_t amplifies the model's
          error up to ~158-fold) the chain is committed to the saturated colour.
        - x0: x̂_0 clipped where it enters the mean, epŝ the model's own (diffusers' clip_sample).
        - dynamic: x̂_0 dynamically thresholded (`dynamic_threshold`), epŝ the model's own (diffusers'
          thresholding with Imagen's uncapped s).
        - none: both as the model gives them.

        A learned variance plays no part: only the target's channels are read.
        """
        output, _ = self.model_output(model, x_t, t)
        return self._denoised(output, x_t, t, clip_mode)

    def _denoised(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_mode: ClipMode
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`denoise` from the model's target `output` at (x_t, t)."""
        x0, eps = self.predict_x0(output, x_t, t), self.predict_eps(output, x_t, t)
        if clip_mode == "none":
            return x0, eps
        if clip_mode == "dynamic":
            return dynamic_threshold(x0), eps
        clipped = x0.clamp(-1, 1)
        return clipped, self.predict_eps_from_x0(x_t, t, clipped) if clip_mode == "recompute" else eps

    def model_output(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model at (x_t, t) in x_t's dtype, split: (its target, like x_t; v, like x_t, or None
        where the variance is fixed)."""
        return self._split(model(x_t, t).to(x_t.dtype))

    def _split(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C or 2C, ...) → (the target, the first C channels; v, the last C, or None)."""
        if self.variance == "fixed":
            return output, None
        target, v = output.chunk(2, dim=1)
        return target, v

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log sigma_t^2 = v'·log beta_t + (1 − v')·log beta~_t, v' = (v + 1)/2 (Nichol & Dhariwal 2021,
        eq. 15), in v's dtype: v = −1 gives beta~_t, v = 1 beta_t; v is not bounded (as improved-diffusion).
        The tables are the bound's clipped ones: at t = 0 both are beta~ of the next step."""
        frac = (v + 1) / 2
        return frac * extract(self.log_betas_clipped, t, v) + (1 - frac) * extract(
            self.posterior_log_variance_clipped, t, v
        )

    # --- training ------------------------------------------------------------------------------

    def training_loss(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
        weighting: LossWeighting = "none", min_snr_gamma: float = MIN_SNR_GAMMA,
    ) -> torch.Tensor:  # fmt: skip
        """L_simple, eq. 14 (Algorithm 1): the mean squared error of the model's prediction at x_t,
        for the configured target. The caller draws t ~ U{0..T−1} and noise ~ N(0, I). With
        `weighting` min_snr, the batch mean of each sample's mean squared error times its
        `min_snr_weight` instead.

        With a learned variance, L_hybrid = that + λ·L_vlb (Nichol & Dhariwal 2021, section 3.1), L_vlb
        estimated by T·L_t (`vb_term`, bits per dimension) at the sampled t, its mean taken from the
        detached prediction: L_vlb trains the variance only, L_simple the mean."""
        x_t = self.q_sample(x0, t, noise)
        prediction, v = self._split(model(x_t, t).float())
        target = self.training_target(x0, t, noise).float()
        if weighting == "none":
            loss = nn.functional.mse_loss(prediction, target)
        else:
            per_sample = (prediction - target).square().flatten(1).mean(1)  # (B,)
            loss = (self.min_snr_weight(t, min_snr_gamma).float() * per_sample).mean()
        if v is None:
            return loss
        x_t = x_t.float()
        mean, _ = self.q_posterior_mean_variance(self.predict_x0(prediction.detach(), x_t, t), x_t, t)
        vlb = self.vb_term(x0.float(), x_t, t, mean, self.learned_log_variance(v, t))
        return loss + HYBRID_LAMBDA * self.num_timesteps * vlb.mean()

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-γ's loss weight at each of `t` (B,), float64 (Hang et al. 2023, "Efficient Diffusion
        Training via Min-SNR Weighting Strategy"): the x_0 error's weight min(SNR_t, γ), with
        SNR_t = alphā_t/(1 − alphā_t), carried over to the target the model predicts: ε's squared error
        is SNR_t times x_0's, so ε gets min(SNR_t, γ)/SNR_t; v's is (SNR_t + 1) times x_0's, so v gets
        min(SNR_t, γ)/(SNR_t + 1).

        Where SNR_t = 0 (alphā_t = 0: a zero-terminal-SNR schedule's last step) ε takes its limit 1
        and x_0 and v take 0, with no division by zero (Min-SNR issue #2)."""
        alphas_cumprod = self.alphas_cumprod.gather(0, t)
        snr = alphas_cumprod / (1 - alphas_cumprod)
        if self.prediction == "eps":
            return gamma / snr.clamp(min=gamma)  # = min(SNR, γ)/SNR; 1 wherever SNR ≤ γ, SNR = 0 included
        clipped = snr.clamp(max=gamma)  # min(SNR, γ)
        return clipped if self.prediction == "x0" else clipped / (snr + 1)

    # --- ancestral sampling, Algorithm 2 -------------------------------------------------------

    def p_mean_variance(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, variance: Variance, clip_mode: ClipMode
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of p(x_{t-1} | x_t).

        The variance is fixed (section 3.2): sigma_t^2 = beta_t ("fixed_large") or beta~_t ("fixed_small"),
        or, for a model that learned it, `learned_log_variance` (and `variance` is not read). The mean
        is the posterior mean (eq. 7) at the predicted x_0, which for eps-prediction equals eq. 11;
        x_0 is kept in the data range as `clip_mode` says first (`denoise`: the mean uses x̂_0 alone,
        so recompute and x0 give the same step).
        """
        output, v = self.model_output(model, x_t, t)
        x0, _ = self._denoised(output, x_t, t, clip_mode)
        mean, _ = self.q_posterior_mean_variance(x0, x_t, t)
        if v is not None:
            return mean, self.learned_log_variance(v, t).exp()
        table = self.betas if variance == "fixed_large" else self.posterior_variance
        return mean, extract(table, t, x_t)

    def p_sample(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        variance: Variance,
        clip_mode: ClipMode,
    ) -> torch.Tensor:
        """One step x_t → x_{t-1} ~ p(x_{t-1} | x_t), Algorithm 2 line 4; no noise is added at t = 0."""
        mean, var = self.p_mean_variance(model, x_t, t, variance, clip_mode)
        nonzero = (t > 0).reshape(-1, *((1,) * (x_t.dim() - 1)))  # bool; the product takes x_t's dtype
        return mean + nonzero * var.sqrt() * noise

    def p_sample_loop_progressive(
        self,
        model: Model,
        noise: torch.Tensor,
        generator: torch.Generator,
        variance: Variance,
        clip_mode: ClipMode,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Algorithm 2 from x_T = `noise`: yields (t, x_{t-1}) for t = T−1, ..., 0 (0-based)."""
        x = noise
        for step in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), step, device=x.device)  # an int fill: int64, as gather wants
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = self.p_sample(model, x, t, z, variance, clip_mode)
            yield step, x

    # --- DDIM, Song et al. 2021 ----------------------------------------------------------------

    def ddim_sigma(self, t: torch.Tensor, t_prev: torch.Tensor, eta: float, x: torch.Tensor) -> torch.Tensor:
        """sigma_t(eta) = eta·√((1 − alphā_prev)/(1 − alphā_t))·√(1 − alphā_t/alphā_prev), Song et al. eq. 16.

        t_prev = −1 stands for the end of the chain, where alphā = 1. With eta = 1 and t_prev = t − 1
        this is the DDPM posterior standard deviation √beta~_t.
        """
        a_t = extract(self.alphas_cumprod, t, x)
        a_prev = self._alphas_cumprod_at(t_prev, x)
        return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()

    def _alphas_cumprod_at(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """alphā_t with alphā_{-1} = 1."""
        return extract(self.alphas_cumprod_prev, t + 1, x)

    def ddim_step(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor,
        noise: torch.Tensor,
        eta: float,
        clip_mode: ClipMode,
    ) -> torch.Tensor:
        """x_t → x_{t_prev}, Song et al. eq. 12: x_prev = √alphā_prev·x̂_0 + √(1 − alphā_prev − sigma²)·epŝ
        + sigma·z, with x̂_0 and epŝ as `denoise` gives them for `clip_mode`."""
        x0, eps = self.denoise(model, x_t, t, clip_mode)
        a_prev = self._alphas_cumprod_at(t_prev, x_t)
        sigma = self.ddim_sigma(t, t_prev, eta, x_t)
        return a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise

    def ddim_sample_loop_progressive(
        self,
        model: Model,
        noise: torch.Tensor,
        timesteps: Sequence[int],
        eta: float,
        generator: torch.Generator,
        clip_mode: ClipMode,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """DDIM from x_T = `noise` through `timesteps` (descending, `ddpm.spacing.timesteps`), each step
        to the next listed timestep and the last to x_0: yields (t, x_{t_prev}). With eta = 0 nothing
        is drawn from `generator`."""
        x = noise
        for i, step in enumerate(timesteps):
            t = torch.full((x.shape[0],), step, device=x.device)
            t_prev = torch.full_like(t, timesteps[i + 1] if i + 1 < len(timesteps) else -1)  # -1: alphā = 1
            z = (
                torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                if eta > 0
                else torch.zeros_like(x)
            )
            x = self.ddim_step(model, x, t, t_prev, z, eta, clip_mode)
            yield step, x

    # --- DPM-Solver++(2M), Lu et al. 2022 --------------------------------------------------------

    def dpm_solver_sample_loop_progressive(
        self, model: Model, noise: torch.Tensor, timesteps: Sequence[int], clip_mode: ClipMode
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, data prediction) from x_T = `noise` through
        `timesteps` (descending) and then to x_0: yields (t, x after the step from t). One network
        evaluation per step; deterministic.

        It steps in lambda = log(alpha/sigma), alpha = √alphā, sigma = √(1 − alphā) (the log-SNR over
        2). Each step s → t, h = lambda_t − lambda_s, is
            x_t = (sigma_t/sigma_s)·x_s − alpha_t·(e^(−h) − 1)·D,
        with D the data prediction x̂_0 at s (first order: DDIM with eta = 0) or, from the second step
        on, the multistep extrapolation D = x̂_0(s) + (x̂_0(s) − x̂_0(s'))/(2r), r = h'/h, where s' is
        the step before s and h' = lambda_s − lambda_s' (second order). The first step has no s', and
        the last, to the data (sigma_t = 0, lambda_t = +inf), lands on x̂_0 itself: first order, as the
        paper prescribes for few steps and diffusers does. x̂_0 is kept in range as `clip_mode` says
        (only x̂_0 enters, so recompute and x0 are one chain)."""
        alpha, sigma, lam = self._dpm_solver_tables(timesteps)  # float64, on the CPU: no sync per step
        x, previous = noise, None  # previous: x̂_0 at the step before
        for i, step in enumerate(timesteps):
            x0, _ = self.denoise(model, x, torch.full((x.shape[0],), step, device=x.device), clip_mode)
            if i + 1 == len(timesteps):
                x = x0
            else:
                h = lam[i + 1] - lam[i]
                d = x0 if previous is None else x0 + (x0 - previous) * (h / (2 * (lam[i] - lam[i - 1])))
                x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * d
            previous = x0
            yield step, x

    def _dpm_solver_tables(self, timesteps: Sequence[int]) -> tuple[list[float], list[float], list[float]]:
        """alpha, sigma and lambda = log(alpha) − log(sigma) at each of `timesteps`, as Python floats."""
        at = torch.tensor(list(timesteps))
        alphas_cumprod = self.alphas_cumprod.cpu()[at]
        log_sigma = 0.5 * self.log_one_minus_alphas_cumprod.cpu()[at]
        lam = 0.5 * alphas_cumprod.log() - log_sigma
        return alphas_cumprod.sqrt().tolist(), log_sigma.exp().tolist(), lam.tolist()

    # --- the variational bound, eq. 5, in bits per dimension -----------------------------------

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, (B,), in float64. x0: (B, ...)."""
        x0 = x0.double()
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device)
        mean = extract(self.sqrt_alphas_cumprod, t, x0) * x0
        standard = mean.new_zeros(())  # N(0, I): mean 0, log-variance 0
        return bits_per_dim(normal_kl(mean, extract(self.log_one_minus_alphas_cumprod, t, x0), standard, standard))

    def p_log_variance(self, variance: Variance, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t) in the bound, with t = 0's replaced (see __init__)."""
        table = self.log_betas_clipped if variance == "fixed_large" else self.posterior_log_variance_clipped
        return extract(table, t, x)

    def decoder_floor_bpd(self, variance: Variance) -> float:
        """The least the decoder L_0 = −log p(x_0 | x_1) (the discretized Gaussian of eq. 13) costs even a
        model that predicts x_0 exactly, in bits per dimension: −log₂(2Φ(1/(255σ₁)) − 1).

        Then the decoder's mean is x_0 itself (eq. 7 at t = 0: coefficients 1 on x_0, 0 on x_1) and an
        interior pixel's bin, x_0 ± 1/255, holds 2Φ(1/(255σ₁)) − 1 = erf(1/(255σ₁√2)) of the mass, σ₁
        the decoder's fixed standard deviation (`p_log_variance` at t = 0). The two edge bins, open to
        ±∞, hold more, so an image of extreme pixels pays a little less."""
        t = self.betas.new_zeros(1, dtype=torch.long)
        sigma = (0.5 * self.p_log_variance(variance, t, self.betas[:1])).exp()
        return -math.log2(torch.erf(1 / (255 * sigma * math.sqrt(2))).item())

    def vb_term_bpd(
        self,
        model: Model,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        variance: Variance,
        clip_mode: ClipMode,
    ) -> torch.Tensor:
        """One term of eq. 5 per sample, (B,), in bits per dimension and float64: the decoder
        L_0 = −log p(x_0 | x_1) (eq. 13) where t = 0, KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
        where t > 0. The model runs at x_t's dtype; the rest is computed in float64. A model that
        learned its variance is judged with it (`variance` is not read)."""
        output, v = self.model_output(model, x_t, t)
        x0_hat, _ = self._denoised(output, x_t, t, clip_mode)
        model_mean, _ = self.q_posterior_mean_variance(x0_hat, x_t, t)
        x_t = x_t.double()
        if v is None:
            model_log_variance = self.p_log_variance(variance, t, x_t)
        else:
            model_log_variance = self.learned_log_variance(v.double(), t)
        return self.vb_term(x0.double(), x_t, t, model_mean.double(), model_log_variance)

    def vb_term(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, model_mean: torch.Tensor,
        model_log_variance: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """L_t of eq. 5 per sample, (B,), in bits per dimension, for p(x_{t-1} | x_t) =
        N(model_mean, e^model_log_variance) (each like x_t, or broadcasting against it), in x_t's dtype:
        what the bound sums and what L_hybrid's L_vlb estimates."""
        true_mean, _ = self.q_posterior_mean_variance(x0, x_t, t)
        kl = normal_kl(true_mean, extract(self.posterior_log_variance_clipped, t, x_t), model_mean, model_log_variance)
        decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
        return torch.where(t == 0, bits_per_dim(decoder_nll), bits_per_dim(kl))

    @torch.inference_mode()
    def nll_bpd(
        self,
        model: Model,
        x0: torch.Tensor,
        variance: Variance,
        clip_mode: ClipMode,
        generator: torch.Generator,
        batch_size: int,
    ) -> NLLTerms:
        """The whole bound of eq. 5 for images x0 (B, C, H, W) in [-1, 1] on the 8-bit grid, every
        timestep, in bits per dimension (float64).

        The model sees up to `batch_size` (image, timestep) pairs at a time, x_t of several timesteps
        stacked. The noise of q(x_t | x_0) is drawn from `generator` one timestep at a time,
        randn(x0.shape) for t = 0, 1, ..., T − 1, so the numbers do not depend on `batch_size`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        chunks = self._q_sample_pairs(x0, generator, batch_size)
        terms = torch.cat([self.vb_term_bpd(model, x0[i], x_t, t, variance, clip_mode) for i, x_t, t in chunks])
        terms = terms.reshape(self.num_timesteps, x0.shape[0]).T  # pairs are timestep-major
        prior = self.prior_bpd(x0)
        return NLLTerms(prior, terms, prior + terms.sum(1))

    def _q_sample_pairs(
        self, x0: torch.Tensor, generator: torch.Generator, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """x_t ~ q(x_t | x_0) (eq. 4) for every (image, timestep) pair, timestep-major (t = 0 for every
        image first), in chunks of up to `batch_size` pairs: yields (image index, x_t, t), each (N, ...).
        The noise is drawn as `nll_bpd` says; at most batch_size + B pairs are held at a time."""
        n = x0.shape[0]
        images = torch.arange(n, device=x0.device)
        held_i, held_x, held_t = images[:0], x0[:0], images[:0]
        for step in range(self.num_timesteps):
            t = torch.full((n,), step, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            held_i, held_t = torch.cat([held_i, images]), torch.cat([held_t, t])
            held_x = torch.cat([held_x, self.q_sample(x0, t, noise)])
            last = step == self.num_timesteps - 1
            while len(held_t) >= batch_size or (last and len(held_t)):
                yield held_i[:batch_size], held_x[:batch_size], held_t[:batch_size]
                held_i, held_x, held_t = held_i[batch_size:], held_x[batch_size:], held_t[batch_size:]
