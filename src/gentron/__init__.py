"""gentron: text-to-image and text-to-video diffusion transformers (GenTron, PixArt-α)."""

__version__ = "0.1.0"
