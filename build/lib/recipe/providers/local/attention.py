"""Which attention implementation trains packed rows (`train.attn_implementation`).

Packed rows carry position ids that restart at every example and no attention mask; transformers
turns that into per-example causal attention for each implementation:
- `flash_attention_2`: variable-length kernels over the examples' boundaries (cu_seqlens from the
  position ids); needs CUDA and the flash-attn package;
- `flex_attention`: a block mask built from the boundaries: masked blocks are skipped, no dense mask;
- `sdpa`: a dense block-diagonal boolean mask (rows x seq^2) handed to scaled_dot_product_attention;
- `eager`: the reference: scores and probabilities materialised.

`auto` picks the best available: flash_attention_2 on CUDA with flash-attn installed, else
flex_attention on CUDA, else sdpa (CPU, where flex attention runs uncompiled and slowly).
"""

from __future__ import annotations

import importlib.util

from recipe.errors import RecipeError

IMPLEMENTATIONS = ("sdpa", "flex_attention", "flash_attention_2", "eager")


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flex_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def resolve(requested: str, device_type: str) -> str:
    """The implementation to use for `requested` on `device_type` (cuda | cpu); errors say why not."""
    if requested == "auto":
        if device_type == "cuda" and flash_attn_installed():
            return "flash_attention_2"
        if device_type == "cuda" and flex_available():
            return "flex_attention"
        return "sdpa"
    if requested == "flash_attention_2" and (device_type != "cuda" or not flash_attn_installed()):
        raise RecipeError(
            "train.attn_implementation=flash_attention_2 needs a CUDA device and the flash-attn package "
            "(pip install flash-attn); use flex_attention or auto"
        )
    if requested == "flex_attention" and not flex_available():
        raise RecipeError(
            "train.attn_implementation=flex_attention needs torch >= 2.5 (torch.nn.attention.flex_attention)"
        )
    if requested not in IMPLEMENTATIONS:
        raise RecipeError(f"train.attn_implementation={requested!r}: use auto or one of {', '.join(IMPLEMENTATIONS)}")
    return requested
