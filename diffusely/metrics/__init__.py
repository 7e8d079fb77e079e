"""Sample quality: Fréchet distance, KID, precision/recall/density/coverage, the feature extractors, and the copy
check (copies: are samples near-copies of training images?)."""

from .copies import CopyCheck, CopyDetector, CopyError, copy_report, save_copies_figure
from .domain import (ContrastiveEncoder, DomainClassifier, DomainFeatures, fit_domain_features, load_domain_features,
                     save_domain_features, train_contrastive_encoder, train_domain_classifier)
from .features import FeatureExtractor
from .frechet import feature_statistics, frechet_distance
from .inception import FIDInceptionV3, InceptionFeatures, load_fid_inception
from .kid import kernel_inception_distance
from .prdc import density_coverage, precision_recall
from .stats import FeatureStats, load_stats, save_stats
from .summary import METRICS, format_copies, format_metrics, quality_metrics

__all__ = [
    "frechet_distance", "feature_statistics", "kernel_inception_distance", "precision_recall", "density_coverage",
    "FeatureStats", "save_stats", "load_stats", "quality_metrics", "format_metrics", "format_copies", "METRICS",
    "FeatureExtractor", "InceptionFeatures", "FIDInceptionV3", "load_fid_inception",
    "DomainFeatures", "DomainClassifier", "ContrastiveEncoder", "train_domain_classifier",
    "train_contrastive_encoder", "fit_domain_features", "save_domain_features", "load_domain_features",
    "CopyDetector", "CopyCheck", "CopyError", "copy_report", "save_copies_figure",
]
