from .domain import DomainClassifier, classifier_features, train_domain_classifier
from .frechet import feature_statistics, frechet_distance

__all__ = ["frechet_distance", "feature_statistics", "DomainClassifier", "train_domain_classifier", "classifier_features"]
