"""All the sample-quality numbers for one set of generated features against a reference, and their table."""

from __future__ import annotations

import numpy as np

from .frechet import feature_statistics, frechet_distance
from .kid import kernel_inception_distance
from .prdc import density_coverage, precision_recall
from .stats import FeatureStats

# name -> (what it is, how to read it), in the order of the table
METRICS = {
    "fd": ("Fréchet distance", "lower is better"),
    "kid": ("KID, mean over subsets", "lower is better"),
    "kid_std": ("KID, std over subsets", ""),
    "precision": ("precision (k=3): fidelity", "higher is better"),
    "recall": ("recall (k=3): diversity", "higher is better"),
    "density": ("density (k=5): fidelity", "~1 when the sets match"),
    "coverage": ("coverage (k=5): diversity", "higher is better"),
}


def quality_metrics(reference: FeatureStats, fake: np.ndarray, *, k_pr: int = 3, k_dc: int = 5,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> dict[str, float | None]:
    """FD, KID (mean, std), precision, recall, density and coverage of features `fake` (N, D) against `reference`.

    FD uses the reference's mu and sigma; the others need its features and are None without them (a
    pytorch-fid .npz). Precision to coverage compare sets of equal size, as their papers do: the larger
    set is cut to a random subset of the smaller one's size.
    """
    fake = np.asarray(fake, np.float64)
    if fake.ndim != 2 or fake.shape[1] != reference.dims:
        raise ValueError(f"generated features are {fake.shape[1:]} but the reference statistics are {reference.dims}-d; "
                         "were they made by different feature extractors?")
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    out["fd"] = frechet_distance(reference.mu, reference.sigma, *feature_statistics(fake))
    if reference.features is None:
        return out
    real = reference.features
    out["kid"], out["kid_std"] = kernel_inception_distance(real, fake, subsets=kid_subsets,
                                                           subset_size=kid_subset_size, seed=seed)
    rng = np.random.default_rng(seed)
    size = min(len(real), len(fake))
    real_sub, fake_sub = (x[rng.choice(len(x), size, replace=False)] if len(x) > size else x for x in (real, fake))
    out["precision"], out["recall"] = precision_recall(real_sub, fake_sub, k_pr)
    out["density"], out["coverage"] = density_coverage(real_sub, fake_sub, k_dc)
    return out


def format_metrics(metrics: dict[str, float | None]) -> str:
    """The metrics as an aligned text table, one per line: name, value, what it is, how to read it."""
    lines = []
    for key, (what, hint) in METRICS.items():
        value = metrics.get(key)
        shown = "n/a" if value is None else f"{value:.4g}"
        lines.append(f"{key:<10} {shown:>10}   {what}" + (f" ({hint})" if hint else ""))
    return "\n".join(lines)


COPY_ROWS = {"samples": "samples", "train": "train vs the rest", "held_out": "held out vs train"}


def format_copies(report: dict) -> str:
    """A copy check (pipelines.evaluate.copy_check: metrics.copies.copy_report and where its sets came from) as
    text: the share of near-copies, then the quantiles of the ratio and of the distance to the nearest training
    image for samples, training images (each against the others) and held-out images, the feature test's share."""
    if "skipped" in report:
        return f"copies: {report['skipped']}"
    pixel = report["pixel"]
    lines = [f"copies: {100 * pixel['near_copies']:.1f}% of {report['samples']} samples are near-copies of one of "
             f"{report['train_count']} training images ({pixel['near_copy_count']} with ratio < "
             f"{pixel['threshold']:.3f}, k={pixel['k']}{', mirrored too' if pixel['flips'] else ''})"]
    for title, table in (("ratio d1/mean(d1..dk)", pixel["ratio"]), ("RMS distance to nearest", pixel["nearest_distance"])):
        lines.append(f"  {title:<24}" + "".join(f"{q:>8}" for q in table["samples"]))
        for name, row in table.items():
            flagged = pixel["flagged"].get(name)
            lines.append(f"    {COPY_ROWS[name]:<22}" + "".join(f"{v:>8.3f}" for v in row.values())
                         + (f"   {100 * flagged:.1f}% below" if flagged is not None and table is pixel["ratio"] else ""))
    lines.append(f"  held out: {report['held_out']}")
    if report.get("features"):
        f = report["features"]
        lines.append(f"  {report['feature_space']} features: {100 * f['near_copies']:.1f}% near-copies (k={f['k']}; "
                     + ", ".join(f"{COPY_ROWS[n]} {100 * v:.1f}%" for n, v in f["flagged"].items()) + ")")
    if report.get("warning"):
        lines.append(f"  warning: {report['warning']}")
    if report.get("figure"):
        lines.append(f"  closest pairs: {report['figure']}")
    return "\n".join(lines)
