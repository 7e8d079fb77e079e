from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
