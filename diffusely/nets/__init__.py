from .autoencoder import Autoencoder, AutoencoderConfig, LatentSpace
from .unet import UNet, UNetConfig

# the text networks (TextUNet and its encoders) live in diffusely.text, with the tokenizers and captions
__all__ = ["UNet", "UNetConfig", "Autoencoder", "AutoencoderConfig", "LatentSpace"]
