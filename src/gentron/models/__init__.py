from gentron.models.transformer import (
    CONDITIONING_MODES,
    MODEL_SIZES,
    MODEL_ZOO,
    GenTronBlock,
    GenTronTransformer,
    count_parameters,
    zoo_config,
)

__all__ = [
    "CONDITIONING_MODES", "MODEL_SIZES", "MODEL_ZOO", "GenTronBlock", "GenTronTransformer",
    "count_parameters", "zoo_config",
]
