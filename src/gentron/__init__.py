"""gentron: text-to-image and text-to-video diffusion transformers (GenTron, PixArt-α)."""

import os

# OpenMP's default busy-wait makes 2 torch threads collapse ~10x on a small CPU when anything else runs
# (measured: docs/demo-recipe.md); passive waiting costs nothing when the machine is idle. Must be set
# before torch is imported, so it lives here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
