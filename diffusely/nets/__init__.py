from .autoencoder import Autoencoder, AutoencoderConfig, LatentSpace
from .text import ScratchTextEncoder, TextUNet, TokenProjection
from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "TextUNet", "ScratchTextEncoder", "TokenProjection", "Autoencoder",
           "AutoencoderConfig", "LatentSpace"]
