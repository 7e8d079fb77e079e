from .autoencoder import train_autoencoder
from .loop import train

__all__ = ["train", "train_autoencoder"]
