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
    "count_parameters", "offline_load_kwargs", "zoo_config",
]


def offline_load_kwargs() -> dict:
    """Keyword arguments for every diffusers ``from_pretrained`` we call: local files only (never a hub), and
    ``low_cpu_mem_usage`` only where `accelerate` is installed. It is not a dependency, and without it diffusers would
    otherwise print its install advice on every load (the demo, `gentron sample`, `gentron eval`)."""
    from diffusers.utils import is_accelerate_available

    return {"local_files_only": True, "low_cpu_mem_usage": is_accelerate_available()}
