"""Which differences between schedules are real: each metric's standard error, from the spread over
seeds where there are several, else from what one run measures, and the verdict on each pair.
"""

from typing import Any

import numpy as np

from ddpm.results import metric_names, sweep_columns

SPREAD_FACTOR = 2.0  # a difference is called real when it exceeds this many combined standard errors
Z_95 = 1.959964  # the normal quantile of a two-sided 95 % interval


def standard_error(row: dict[str, Any], key: str) -> tuple[float, str] | None:
    """How far `key` of this row could move by chance, and from what: the spread over the seeds where
    there are several, else the noise one run measures (FID's and KID's bootstrap over the samples,
    the held-out images); None where there is nothing to judge by."""
    seeds = len(row["seeds"].split())
    if f"{key}_std_seeds" in row:
        return row[f"{key}_std_seeds"] / np.sqrt(seeds), f"the spread over {seeds} seeds"
    if f"{key}_ci_low" in row:
        return (row[f"{key}_ci_high"] - row[f"{key}_ci_low"]) / (
            2 * Z_95
        ), "FID's bootstrap interval, sampling noise only"
    if key == "nll_bpd" and "nll_bpd_sem" in row:
        return row["nll_bpd_sem"], "the spread over the held-out images"
    if key.startswith("kid") and key.endswith("_mean") and key.removesuffix("_mean") + "_se" in row:
        return row[key.removesuffix("_mean") + "_se"], "KID's bootstrap standard error, sampling noise only"
    return None


def differences(rows: list[dict[str, Any]]) -> list[str]:
    """Per pair of schedules and metric, in words: which is lower, by how much, and whether that is
    more than SPREAD_FACTOR combined standard errors (a real difference) or within noise."""
    fid, kid, _ = metric_names(rows[0])
    keys = [fid, kid, "nll_bpd", *sweep_columns(rows[0])]  # not the loss: each schedule sets it another task
    lines = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            for key in keys:
                if key not in a or key not in b:
                    continue
                low, high = (a, b) if a[key] <= b[key] else (b, a)
                gap = high[key] - low[key]
                said = f"- {key}: {low['schedule']} is lower than {high['schedule']} by {gap:.4g}"
                errors = [standard_error(r, key) for r in (a, b)]
                if None in errors:
                    lines.append(f"{said}; one seed and no other measure of noise, so not judged (add seeds)")
                    continue
                combined = float(np.hypot(errors[0][0], errors[1][0]))
                sources = " and ".join(dict.fromkeys(e[1] for e in errors))
                if combined > 0 and gap > SPREAD_FACTOR * combined:
                    verdict = f"{gap / combined:.1f} combined standard errors: a real difference"
                else:
                    verdict = "within noise" + (f" ({gap / combined:.1f} combined standard errors)" if combined else "")
                lines.append(f"{said}, {verdict} (judged by {sources})")
    return lines
