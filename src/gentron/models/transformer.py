"""GenTronTransformer: every block of the GenTron / PixArt-α / DiT family in one file.

One transformer built on DiT (patchify, fixed 2-D sin-cos positions, timestep embedding, adaLN,
linear unpatchify). The conditioning mode is a config option of the *same* block, not a copy of it:

==============  ==========================================================  =====================
mode            what conditions the block                                   paper
==============  ==========================================================  =====================
``adaln-zero``  adaLN-zero modulation from time + pooled text               GenTron Fig. 2a
``cross-attn``  cross-attention to text tokens; adaLN from time + pooled     GenTron Fig. 2b
``adaln-single``cross-attention; one global time MLP + per-block tables      PixArt-α Sec. 2.3
``class``       adaLN-zero from time + class embedding (ImageNet DiT)        DiT
==============  ==========================================================  =====================

Several text encoders (GenTron's interleaved cross-attention, GenTron App. A): block ``i`` attends to
encoder ``i mod k``; each encoder has its own token projection and the pooled embeddings of all
encoders are added to the time embedding.

Video (GenTron Sec. 3.3.1): with ``temporal_layers=True`` every block gets a TempSelfAttn between the
cross-attention and the MLP (Eq. 3-5) — or, with ``temporal_every=k > 1`` (a cheaper option that is not the
paper's), every k-th block; ``temporal_dim`` (default: the hidden size, as the paper) narrows its q/k/v width, the
other cheaper option. Its output projection is zero-initialised, so a T2V model
initialised from a T2I model starts as that T2I model applied frame by frame. With
``temporal_pos_embed=True`` (default) a fixed 1-D sin-cos frame embedding enters the temporal queries and
keys only (not values, not the residual stream): still zero at init, motion-free (identity-mask) frames
stay independent of their index, and attention can tell forward from backward time (docs/video.md).
``temporal_relative_values=True`` also puts the embedding into the values as relative positions (P_s - P_t), so
a frame can know where it sits in the clip even from pure noise; identity under the motion-free mask (docs/video.md).
``temporal_conv=True`` (not the paper's) adds a zero-initialised depthwise 3×3×3 convolution over (frames, rows,
columns) beside TempSelfAttn, so a motion is a local copy from a neighbour in the previous frame; motion-free
samples keep only its same-frame taps (docs/video.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

CONDITIONING_MODES = ("adaln-zero", "cross-attn", "adaln-single", "class")
#: Where queries and keys are RMS-normalised (`Attention`): nowhere (GenTron, PixArt-α, DiT), in
#: cross-attention only (text keys of any scale; free at the demo's size), or in every attention (SD3, Flux).
QK_NORMS = ("none", "cross", "all")


# ----------------------------------------------------------------------------------------------
# Model zoo (a dict, as in DiT). GenTron Table 1 for XL and G; DiT Table 1 for S/B/L.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    depth: int
    hidden_size: int
    num_heads: int
    mlp_hidden_size: int


MODEL_SIZES: dict[str, ModelSize] = {
    # test / CPU-demo sizes
    "T": ModelSize(depth=2, hidden_size=64, num_heads=2, mlp_hidden_size=256),  # unit tests
    "Demo": ModelSize(depth=6, hidden_size=256, num_heads=4, mlp_hidden_size=1024),  # 2-core demo
    # DiT sizes
    "S": ModelSize(depth=12, hidden_size=384, num_heads=6, mlp_hidden_size=1536),
    "B": ModelSize(depth=12, hidden_size=768, num_heads=12, mlp_hidden_size=3072),
    "L": ModelSize(depth=24, hidden_size=1024, num_heads=16, mlp_hidden_size=4096),
    "XL": ModelSize(depth=28, hidden_size=1152, num_heads=16, mlp_hidden_size=4608),  # GenTron Table 1
    "G": ModelSize(depth=48, hidden_size=1664, num_heads=16, mlp_hidden_size=6656),  # GenTron Table 1
}

MODEL_ZOO: dict[str, dict[str, int]] = {
    f"GenTron-{size}/{patch}": {"size": size, "patch_size": patch}
    for size in MODEL_SIZES
    for patch in (1, 2, 4, 8)
}


def zoo_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor kwargs of `GenTronTransformer` for a zoo name such as ``GenTron-XL/2``.

    Names are case-insensitive and the ``GenTron-`` prefix is optional (``XL/2``, ``dit-xl/2``).
    """
    key = name.strip()
    for prefix in ("GenTron-", "gentron-", "DiT-", "dit-", "PixArt-", "pixart-"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    size_name, _, patch = key.partition("/")
    sizes = {k.lower(): k for k in MODEL_SIZES}
    if size_name.lower() not in sizes or not patch.isdigit() or int(patch) not in (1, 2, 4, 8):
        valid = ", ".join(f"GenTron-{s}/{{1,2,4,8}}" for s in MODEL_SIZES)
        raise ValueError(f"unknown model name {name!r}; valid names: {valid}")
    size = MODEL_SIZES[sizes[size_name.lower()]]
    cfg: dict[str, Any] = dict(
        depth=size.depth,
        hidden_size=size.hidden_size,
        num_heads=size.num_heads,
        mlp_hidden_size=size.mlp_hidden_size,
        patch_size=int(patch),
    )
    cfg.update(overrides)
    return cfg


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin | cos] features of ``positions`` (float64 for exactness, as DiT / PixArt)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(
    dim: int, grid_h: int, grid_w: int, base_size: Optional[int] = None, interpolation_scale: float = 1.0
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a ``grid_h × grid_w`` patch grid, shape (h*w, dim).

    The first half of the channels encodes the column, the second the row (DiT's layout). PixArt-α
    rescales the grid to ``base_size`` (and divides by ``interpolation_scale``) so one model can run at
    several resolutions and aspect ratios; with ``base_size=None`` the grid is plain integer positions,
    which is exactly DiT's embedding.
    """
    rows = torch.arange(grid_h, dtype=torch.float64)
    cols = torch.arange(grid_w, dtype=torch.float64)
    if base_size is not None:
        rows = rows / (grid_h / base_size) / interpolation_scale
        cols = cols / (grid_w / base_size) / interpolation_scale
    row_grid, col_grid = torch.meshgrid(rows, cols, indexing="ij")
    return torch.cat([sincos_1d(col_grid, dim // 2), sincos_1d(row_grid, dim // 2)], dim=1).float()


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, [cos | sin] as DiT and diffusers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedder(nn.Module):
    """Sinusoidal features → MLP. Used for timesteps and PixArt-α's size / aspect-ratio micro-conditions."""

    def __init__(self, out_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class TokenProjection(nn.Module):
    """Text tokens → model width (PixArt-α's caption projection: Linear, GELU-tanh, Linear).

    With ``whitening=True`` the frozen encoder's tokens are first whitened by a fixed, data-fitted affine map
    (x − μ)·W (buffers, saved with the model; fitted once by :meth:`fit_whitening`, before training). Why: a
    frozen encoder's token features are badly conditioned. On the shapes world 20 of MiniLM's 384 directions
    hold 90 % of the variance (word identity), and what tells "a red square left of a blue one" from "a blue
    square left of a red one" lives in directions with ~1e-4 of the top variance. A linear layer learns along
    an input direction at a rate set by its variance, so the model reads the caption as a bag of words for
    thousands of steps. Whitened, every direction starts equal: the demo model learns which object goes left
    within ~1000 high-noise steps instead of not at all in 3000 (docs/demo-recipe.md, eighth round).
    """

    def __init__(self, in_dim: int, hidden_size: int, whitening: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.whitening = whitening
        if whitening:  # identity until fitted
            self.register_buffer("feature_mean", torch.zeros(in_dim))
            self.register_buffer("feature_whitening", torch.eye(in_dim))
            self.register_buffer("whitening_fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit_whitening(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None,
                      shrinkage: float = 1e-3) -> None:
        """Fit μ and W = (Σ + λI)^(-1/2) on the kept tokens (B, L, D) of a caption sample; λ = shrinkage × the
        mean eigenvalue of Σ keeps directions the sample does not vary in from being blown up."""
        if not self.whitening:
            raise ValueError("this token projection was built without whitening (text_whitening=False)")
        if shrinkage <= 0:
            raise ValueError(f"text whitening shrinkage must be > 0, got {shrinkage}")
        feats = tokens.reshape(-1, tokens.shape[-1]) if mask is None else tokens[mask.bool()]
        if feats.shape[0] < 2:
            raise ValueError("text whitening needs at least two tokens to fit")
        feats = feats.double().to(self.feature_mean.device)
        mean = feats.mean(0)
        cov = torch.cov((feats - mean).T)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0) + shrinkage * evals.clamp_min(0).mean()
        self.feature_mean.copy_(mean)
        self.feature_whitening.copy_(evecs @ torch.diag(evals.rsqrt()) @ evecs.T)
        self.whitening_fitted.fill_(True)

    @torch.no_grad()
    def whitened_energy(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per caption, the mean square per dimension of its whitened kept tokens (B, L, D) → (B,): ≈ 1 on the
        captions the whitening was fitted on (median 0.8 on the shapes world), far above where a caption uses
        words it was not fitted on, whose directions get amplified (moving-shapes captions: 10-40)."""
        energy = self.whiten(tokens.to(self.feature_mean.device)).pow(2).mean(-1)
        if mask is None:
            return energy.mean(-1)
        keep = mask.to(energy.device).float()
        return (energy * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) @ W in fp32 even under autocast: it amplifies directions bf16 rounding would blur."""
        with torch.autocast("cuda" if x.is_cuda else "cpu", enabled=False):  # (meta: FLOP counting)
            return (x.float() - self.feature_mean) @ self.feature_whitening

    @torch.no_grad()
    def folded_fc1(self) -> tuple[torch.Tensor, torch.Tensor]:
        """fc1's weight and bias with the whitening folded in, for layouts without whitening (PixArt-α, diffusers):
        fc1(whiten(x)) = x·W'ᵀ + b' with W' = W_fc1·Wᵀ and b' = b_fc1 − W'·μ (computed in float64)."""
        weight, bias = self.fc1.weight, self.fc1.bias
        if not self.whitening:
            return weight.detach().clone(), bias.detach().clone()
        folded = weight.double() @ self.feature_whitening.double().T
        return folded.to(weight.dtype), (bias.double() - folded @ self.feature_mean.double()).to(bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whitening:
            x = self.whiten(x)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


# ----------------------------------------------------------------------------------------------
# Attention (one module for self, cross and temporal attention)
# ----------------------------------------------------------------------------------------------


def _attention_bias(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """Boolean key mask (B, L) or (B, Lq, L) → additive bias broadcastable to SDPA's (B, H, Lq, L).

    An additive bias (rather than a boolean mask) keeps a fully padded row finite instead of NaN.
    """
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        mask = mask > 0.5
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias = bias.masked_fill(~mask, torch.finfo(dtype).min)
    return bias[:, None, None, :] if mask.dim() == 2 else bias[:, None]


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, except that on CPU bf16 inputs are attended in fp32.

    Why: PyTorch's CPU flash-attention kernel is 3-5x slower in bf16 than in fp32 at the demo's shapes (its
    backward above all; fwd+bwd 9.3 vs 3.4 ms for 64 tokens, batch 32, 2 heads), and attention was 40% of a bf16
    demo step. The matmuls around it stay in bf16; the result is cast back to the input dtype.
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
    with torch.autocast("cpu", enabled=False):  # else autocast casts the inputs straight back to bf16
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                             attn_mask=None if bias is None else bias.float())
    return out.to(q.dtype)


class Attention(nn.Module):
    """Multi-head attention with fused projections and `scaled_dot_product_attention`.

    Self-attention fuses Q, K and V into one matmul; cross-attention fuses K and V, and exposes
    `project_kv` so a sampler can compute the text keys/values once per prompt (they are constant over
    the denoising steps).

    ``qk_norm`` (off in GenTron, PixArt-α and DiT; on in SD3, Flux and Lumina) RMS-normalises each head's
    queries and keys, with a learned scale. Why: attention logits then start at unit scale whatever the
    magnitude of the inputs. PixArt's caption projection starts at N(0, 0.02), and without the norm the
    demo's cross-attention is still close to uniform over the tokens after 1500 steps; with it, attention is
    sharp (it did not make the demo learn spatial relations: docs/demo-recipe.md, fifth round).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: Optional[int] = None, zero_init_out: bool = False,
                 qk_norm: bool = False, norm_eps: float = 1e-6, pos_query: bool = False,
                 inner_dim: Optional[int] = None):
        super().__init__()
        inner_dim = inner_dim or dim  # width of q, k, v (self-attention only; the temporal layer's ``temporal_dim``)
        if inner_dim % num_heads:
            raise ValueError(f"attention width {inner_dim} is not divisible by {num_heads} heads")
        if context_dim is not None and inner_dim != dim:
            raise ValueError("cross-attention keeps the block's width (inner_dim is for self-attention)")
        self.num_heads = num_heads
        head_dim = inner_dim // num_heads
        # Identity when off: no parameters, so checkpoints without the norm load unchanged.
        self.q_norm = nn.RMSNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
            if pos_query:  # see `queries`; zero at init
                self.q_pos = nn.Linear(dim, dim, bias=False)
                nn.init.zeros_(self.q_pos.weight)
        else:
            self.qkv = nn.Linear(dim, 3 * inner_dim)
        self.proj = nn.Linear(inner_dim, dim)
        if zero_init_out:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def queries(self, x: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cross-attention queries (B, heads, N, head_dim): W_q x, plus W_pos P with the positional query.

        Why the positional term: at high noise x is mostly noise, so W_q x barely knows where a patch is,
        yet that is where a two-object layout is decided; W_pos P is a noise-free query from the sin-cos
        position P alone (zero at init, so the model starts as it would without it)."""
        q = self.q(x)
        if pos is not None and hasattr(self, "q_pos"):
            q = q + self.q_pos(pos.to(q.dtype))
        return self.q_norm(self._heads(q))

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.k_norm(self._heads(k)), self._heads(v)

    def forward(
        self,
        x: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        b, n, d = x.shape
        if self.is_cross:
            q = self.queries(x, pos)
            k, v = kv if kv is not None else self.project_kv(context)  # keys already normalised
        else:
            # chunk (not view + permute + unbind): its backward is a single concatenation of the
            # three gradients, instead of a stack plus a permuted copy.
            q, k, v = (self._heads(z) for z in self.qkv(x).chunk(3, dim=-1))
            q, k = self.q_norm(q), self.k_norm(k)
        out = scaled_dot_product(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """The block's feed-forward: fc1 → GELU → fc2, optionally with a local token mixer in the hidden layer.

    ``token_conv`` adds a depthwise 3×3 convolution over the token grid to the hidden activations, as a
    zero-initialised residual (h + gain · DWConv(h)): SANA's Mix-FFN idea, which gives each token its neighbours'
    features without attention. At init the MLP is exactly the plain one. Needs the token grid in ``forward``.
    ``token_conv_gain`` is a fixed multiplier on the conv's output: under Adam (steps of about lr per weight,
    whatever the gradient's scale) the conv's output then moves ``gain`` times as fast. Why: the demo adds the
    conv at zero for its last minutes of training, and at gain 1 it does not grow into drawing crosses in time.
    """

    def __init__(self, dim: int, hidden: int, token_conv: bool = False, token_conv_gain: float = 1.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.token_conv = None
        self.token_conv_gain = token_conv_gain
        if token_conv:
            self.token_conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
            nn.init.zeros_(self.token_conv.weight)
            nn.init.zeros_(self.token_conv.bias)

    def forward(self, x: torch.Tensor, grid: Optional[tuple[int, int]] = None) -> torch.Tensor:
        h = F.gelu(self.fc1(x), approximate="tanh")
        if self.token_conv is not None:
            if grid is None:
                raise ValueError("an Mlp with token_conv needs the token grid (grid_h, grid_w)")
            b, n, c = h.shape
            maps = h.transpose(1, 2).reshape(b, c, *grid)
            h = h + self.token_conv_gain * self.token_conv(maps).flatten(2).transpose(1, 2)
        return self.fc2(h)


class TextRefiner(nn.Module):
    """A few pre-LN transformer layers over the projected text tokens, trained with the model.

    Not in GenTron or PixArt-α (their text features go straight into cross-attention, frozen); an option
    in the spirit of Lumina-Image 2.0's context refiner. Why: cross-attention keys are a *linear* map of
    each token on its own, so "which object is named before 'left of'" must already be in a frozen
    token's features. Self-attention over the tokens, with a 1-D sin-cos token-position signal, lets the
    model learn such bindings itself. (On the shapes demo MiniLM's tokens already carry them and the refiner
    did not help: docs/demo-recipe.md, fourth round.) Every residual branch starts at zero, so a fresh
    refiner is the identity and can be added to a trained model.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, norm_eps: float = 1e-6,
                 qk_norm: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict(dict(
                norm1=nn.LayerNorm(hidden_size, eps=norm_eps),
                attn=Attention(hidden_size, num_heads, zero_init_out=True, qk_norm=qk_norm, norm_eps=norm_eps),
                norm2=nn.LayerNorm(hidden_size, eps=norm_eps),
                mlp=Mlp(hidden_size, 4 * hidden_size),
            ))
            for _ in range(num_layers)
        )
        for layer in self.layers:  # attention's output projection is zeroed by zero_init_out
            nn.init.zeros_(layer["mlp"].fc2.weight)
            nn.init.zeros_(layer["mlp"].fc2.bias)

    def forward(self, tokens: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """tokens (B, L, D); ``bias`` the padding bias of :func:`_attention_bias` (padded keys ignored)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        # Token order enters the attention input only (so a fresh refiner returns ``tokens`` exactly), after
        # the norm: projected tokens start ~50x smaller than the unit-scale sin-cos signal, which would drown them.
        order = sincos_1d(positions, tokens.shape[-1]).to(tokens.dtype)[None]
        h = tokens
        for layer in self.layers:
            h = h + layer["attn"](layer["norm1"](h) + order, bias=bias)
            h = h + layer["mlp"](layer["norm2"](h))
        return h


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift, with per-sample (B, 1, D) scale and shift."""
    return torch.addcmul(shift, x, 1 + scale)


# ----------------------------------------------------------------------------------------------
# The block
# ----------------------------------------------------------------------------------------------


class GenTronBlock(nn.Module):
    """One transformer block; the conditioning mode decides which sub-layers exist.

    Order (GenTron Fig. 2-3): adaLN → self-attn → [cross-attn] → [TempSelfAttn] → adaLN → MLP.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_hidden_size: int,
        conditioning: str,
        context_dim: Optional[int] = None,
        temporal: bool = False,
        norm_eps: float = 1e-6,
        temporal_pos_embed: bool = False,
        temporal_relative_values: bool = False,
        temporal_dim: Optional[int] = None,
        qk_norm: str = "none",
        pos_query: bool = False,
        mlp_token_conv: bool = False,
        mlp_token_conv_gain: float = 1.0,
        temporal_conv: bool = False,
    ):
        super().__init__()
        self.conditioning = conditioning
        self.temporal_pos_embed = bool(temporal and temporal_pos_embed)
        self.temporal_relative_values = bool(self.temporal_pos_embed and temporal_relative_values)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        every = dict(qk_norm=qk_norm == "all", norm_eps=norm_eps)
        self.attn = Attention(hidden_size, num_heads, **every)
        self.cross_attn = None
        if context_dim is not None:
            # The output projection starts at zero so a fresh cross-attention is an identity residual.
            self.cross_attn = Attention(hidden_size, num_heads, context_dim=context_dim, zero_init_out=True,
                                        qk_norm=qk_norm in ("cross", "all"), norm_eps=norm_eps, pos_query=pos_query)
        self.temporal_attn = None
        if temporal:
            self.norm_temporal = nn.LayerNorm(hidden_size, eps=norm_eps)  # the "LN" of GenTron Eq. 4
            self.temporal_attn = Attention(hidden_size, num_heads, zero_init_out=True, inner_dim=temporal_dim, **every)
        self.temporal_conv = None
        if temporal and temporal_conv:
            self.temporal_conv = nn.Conv3d(hidden_size, hidden_size, kernel_size=3, padding=1, groups=hidden_size)
            nn.init.zeros_(self.temporal_conv.weight)
            nn.init.zeros_(self.temporal_conv.bias)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.mlp = Mlp(hidden_size, mlp_hidden_size, token_conv=mlp_token_conv, token_conv_gain=mlp_token_conv_gain)
        if conditioning == "adaln-single":
            # PixArt-α: per-block learned table added to the one global time modulation.
            self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        else:
            # DiT's adaLN-zero: the modulation is zero at init, so every gate is zero.
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
            nn.init.zeros_(self.adaLN_modulation[1].weight)
            nn.init.zeros_(self.adaLN_modulation[1].bias)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) for attention and MLP, each (B, 1, D).

        ``cond`` is the conditioning vector c (B, D) for adaLN-zero modes and the output of PixArt's
        global ``t_block`` (B, 6D) for adaLN-single.
        """
        if self.conditioning == "adaln-single":
            mod = self.scale_shift_table[None] + cond.view(cond.shape[0], 6, -1)
        else:
            mod = self.adaLN_modulation(cond).view(cond.shape[0], 6, -1)
        return tuple(m.unsqueeze(1) for m in mod.unbind(1))

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        context_bias: Optional[torch.Tensor] = None,
        context_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        num_frames: int = 1,
        temporal_bias: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        grid: Optional[tuple[int, int]] = None,
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(cond)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross_attn is not None:
            # PixArt-α applies cross-attention to the un-normalised residual stream.
            x = x + self.cross_attn(x, context, bias=context_bias, kv=context_kv, pos=pos)
        if self.temporal_attn is not None and num_frames > 1:
            x = x + self.temporal_residual(x, num_frames, temporal_bias, grid)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp), grid)
        return x

    def temporal_residual(
        self, x: torch.Tensor, num_frames: int, temporal_bias: Optional[torch.Tensor],
        grid: Optional[tuple[int, int]] = None,
    ) -> torch.Tensor:
        """TempSelfAttn(LN(x)) over the frames at each spatial position (GenTron Eq. 3-5).

        Eq. 3's rearrangement ``(b t) n d -> (b n) t d`` is applied to the attention heads only: the norm and
        the projections act on each token alone, so they run in the block's own frame-major layout, and q, k, v
        are attended as a (b, n, heads) batch of frame sequences. The output is the same as rearranging the
        stream (tested); the motion-free mask broadcasts over positions instead of being copied per position,
        and q/k/v may be narrower than the stream (``temporal_dim``). On the demo's CPU shapes the two layouts
        run at the same speed (docs/benchmarks.md, T2V).

        With ``temporal_pos_embed`` a fixed 1-D sin-cos frame embedding P_t enters the queries and keys, not
        the values: q = W_q(LN(x) + P_t), k likewise, v = W_v LN(x). Without frame positions attention over
        frames is permutation-equivariant and cannot tell a motion's direction. This way (a) the branch is
        still exactly zero at init (zero output projection), and (b) under the motion-free identity mask a
        frame attends only to itself and gets W_o W_v LN(x), independent of its index: motion-free samples
        stay per-frame image models.
        """
        attn = self.temporal_attn
        bt, n, d = x.shape
        b, t = bt // num_frames, num_frames
        normed = self.norm_temporal(x)
        qkv = attn.qkv(normed).view(b, t, n, -1)  # the "LN" of Eq. 4, per token
        inner = qkv.shape[-1] // 3
        if self.temporal_pos_embed:
            pe = sincos_1d(torch.arange(t, device=x.device), d).to(qkv.dtype)  # (T, D)
            width = 3 * inner if self.temporal_relative_values else 2 * inner  # which of q, k, v see P_t
            pe_proj = F.linear(pe, attn.qkv.weight[:width].to(qkv.dtype))  # (T, width), no bias (already in qkv)
            qkv = qkv + F.pad(pe_proj, (0, 3 * inner - width))[None, :, None]
        heads = attn.num_heads
        q, k, v = qkv.view(b, t, n, 3, heads, -1).permute(3, 0, 2, 4, 1, 5).unbind(0)  # each (b, n, heads, T, hd)
        q, k = attn.q_norm(q), attn.k_norm(k)
        # temporal_bias is (B, T, T), broadcast over positions and heads
        out = scaled_dot_product(q, k, v, None if temporal_bias is None else temporal_bias[:, None, None])
        if self.temporal_relative_values:
            # Relative frame positions in the values (Shaw et al. 2018): frame t reads sum_s a_ts W_v(LN(x_s) + P_s - P_t).
            # The weights sum to one, so subtracting W_v P_t after attention is exact. Under the identity mask
            # (a_tt = 1) the offset is zero and a motion-free sample is still a per-frame image model; with motion,
            # sum_s a_ts P_s - P_t tells a frame where it sits in the clip even when every frame looks the same (pure
            # noise), which Q/K positions alone cannot: attention reweights values, and equal values stay equal.
            out = out - pe_proj[:, 2 * inner :].view(t, heads, -1).transpose(0, 1)
        out = attn.proj(out.permute(0, 3, 1, 2, 4).reshape(bt, n, inner))  # Eq. 5: back to (b t) n d
        if self.temporal_conv is not None:
            out = out + self.spatiotemporal_conv(normed, t, temporal_bias, grid)
        return out

    def spatiotemporal_conv(self, normed: torch.Tensor, num_frames: int, temporal_bias: Optional[torch.Tensor],
                            grid: Optional[tuple[int, int]]) -> torch.Tensor:
        """``temporal_conv``: a depthwise 3×3×3 convolution of LN(x) over (frames, rows, columns), zero at init.

        Attention over frames sees one spatial position, so moving an object needs a second hop through the next
        block's spatial attention, and the direction has to be tied to each frame's index. This conv makes a motion
        one local operation instead, token (t+1, p) copying from (t, p - v), the video analogue of ``mlp_token_conv``.
        It obeys the motion-free mask: a sample whose frames may not attend to each other keeps only the
        same-frame taps (a per-frame 2-D conv), so perturbing one frame leaves the others unchanged."""
        if grid is None:
            raise ValueError("temporal_conv needs the token grid (grid_h, grid_w)")
        conv = self.temporal_conv
        bt, n, d = normed.shape
        b = bt // num_frames
        maps = normed.view(b, num_frames, *grid, d).permute(0, 4, 1, 2, 3)  # (B, D, T, H, W)
        weight, bias = conv.weight.to(maps.dtype), conv.bias.to(maps.dtype)
        out = F.conv3d(maps, weight, bias, padding=1, groups=d)
        if temporal_bias is not None:  # (B, T, T): a masked (t, t+1) entry marks a motion-free sample
            motion_free = temporal_bias[:, 0, 1] < 0
            same_frame = torch.zeros_like(weight)
            same_frame[:, :, 1] = weight[:, :, 1]
            per_frame = F.conv3d(maps, same_frame, bias, padding=1, groups=d)
            out = torch.where(motion_free[:, None, None, None, None], per_frame, out)
        return out.permute(0, 2, 3, 4, 1).reshape(bt, n, d)


class FinalLayer(nn.Module):
    """adaLN + linear to patch pixels, zero-initialised so the untrained model predicts zero."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, single: bool, norm_eps: float = 1e-6):
        super().__init__()
        self.single = single
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        if single:
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
            nn.init.zeros_(self.adaLN_modulation[1].weight)
            nn.init.zeros_(self.adaLN_modulation[1].bias)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.single:
            shift, scale = (self.scale_shift_table[None] + cond[:, None]).unbind(1)
        else:
            shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift.unsqueeze(1), scale.unsqueeze(1)))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

TensorOrTuple = Union[torch.Tensor, Sequence[torch.Tensor], None]


def _as_tuple(x: TensorOrTuple) -> tuple:
    if x is None:
        return ()
    if isinstance(x, torch.Tensor):
        return (x,)
    return tuple(x)


class GenTronTransformer(ModelMixin, ConfigMixin):
    """Text- (or class-) conditional diffusion transformer for images and videos.

    Follows diffusers' transformer call convention; ``hidden_states`` is (B, C, H, W) for images and
    (B, C, T, H, W) for videos. With several text encoders, ``encoder_hidden_states``,
    ``encoder_attention_mask`` and ``pooled_projections`` are tuples, one entry per encoder.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["GenTronBlock"]

    @register_to_config
    def __init__(
        self,
        conditioning: str = "cross-attn",
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        out_channels: Optional[int] = None,
        learn_sigma: bool = True,
        depth: int = 28,
        hidden_size: int = 1152,
        num_heads: int = 16,
        mlp_hidden_size: int = 4608,
        text_dims: Sequence[int] = (4096,),
        pooled_dims: Optional[Sequence[int]] = None,
        num_classes: int = 1000,
        class_dropout: bool = True,
        micro_conditions: bool = False,
        temporal_layers: bool = False,
        temporal_every: int = 1,
        temporal_pos_embed: bool = True,
        temporal_relative_values: bool = False,
        temporal_dim: Optional[int] = None,
        temporal_conv: bool = False,
        text_refiner_layers: int = 0,
        qk_norm: str = "none",
        pos_query: bool = False,
        mlp_token_conv: bool = False,
        mlp_token_conv_gain: float = 1.0,
        text_whitening: bool = False,
        text_whitening_shrinkage: float = 1e-3,
        pos_embed_base_size: Optional[int] = None,
        pos_embed_interpolation_scale: float = 1.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if temporal_every < 1:
            raise ValueError(f"temporal_every must be >= 1, got {temporal_every}")
        if not mlp_token_conv_gain > 0:
            raise ValueError(f"mlp_token_conv_gain must be > 0, got {mlp_token_conv_gain}")
        if temporal_relative_values and not temporal_pos_embed:
            raise ValueError("temporal_relative_values adds the frame embedding to the values: it needs temporal_pos_embed")
        if temporal_conv and not temporal_layers:
            raise ValueError("temporal_conv lives beside TempSelfAttn: it needs temporal_layers")
        if temporal_dim is not None and (temporal_dim < num_heads or temporal_dim % num_heads):
            raise ValueError(f"temporal_dim must be a positive multiple of num_heads ({num_heads}), got {temporal_dim}")
        if text_refiner_layers < 0:
            raise ValueError(f"text_refiner_layers must be >= 0, got {text_refiner_layers}")
        if qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {qk_norm!r}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2-D sin-cos positions), got {hidden_size}")
        if conditioning not in CONDITIONING_MODES:
            raise ValueError(f"conditioning must be one of {CONDITIONING_MODES}, got {conditioning!r}")
        text_dims = list(text_dims or [])
        if conditioning != "class" and not text_dims:
            raise ValueError(f"conditioning {conditioning!r} needs at least one text encoder (text_dims)")
        if conditioning == "adaln-single" and pooled_dims:
            raise ValueError("adaln-single (PixArt-α) uses no pooled text; set pooled_dims=None or []")
        if micro_conditions and conditioning != "adaln-single":
            raise ValueError("micro_conditions (PixArt-α 1024-MS) are only defined for adaln-single")
        if pooled_dims is None and conditioning in ("adaln-zero", "cross-attn"):
            pooled_dims = text_dims  # pooled = masked mean of tokens unless told otherwise
        pooled_dims = list(pooled_dims or []) if conditioning != "class" else []
        self.out_channels = out_channels or (2 * in_channels if learn_sigma else in_channels)
        self.num_encoders = len(text_dims) if conditioning != "class" else 0
        uses_cross = conditioning in ("cross-attn", "adaln-single")

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = ScalarEmbedder(hidden_size)
        if conditioning == "class":
            self.y_embedder = nn.Embedding(num_classes + int(class_dropout), hidden_size)
        if uses_cross:
            self.token_projections = nn.ModuleList(TokenProjection(d, hidden_size, text_whitening) for d in text_dims)
            if text_refiner_layers > 0:
                self.text_refiners = nn.ModuleList(
                    TextRefiner(hidden_size, num_heads, text_refiner_layers, norm_eps, qk_norm == "all") for _ in text_dims
                )
        elif text_refiner_layers:
            raise ValueError(f"text_refiner_layers needs cross-attention; conditioning is {conditioning!r}")
        elif text_whitening:
            raise ValueError(f"text_whitening needs cross-attention; conditioning is {conditioning!r}")
        if pos_query and not uses_cross:
            raise ValueError(f"pos_query needs cross-attention; conditioning is {conditioning!r}")
        if pooled_dims:
            # GenTron: pooled text of every encoder is added to the time embedding.
            self.pooled_projections = nn.ModuleList(
                nn.Sequential(nn.Linear(d, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
                for d in pooled_dims
            )
        if conditioning == "adaln-single":
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
            if micro_conditions:
                if hidden_size % 3:
                    raise ValueError("micro_conditions need hidden_size divisible by 3")
                self.resolution_embedder = ScalarEmbedder(hidden_size // 3)
                self.aspect_ratio_embedder = ScalarEmbedder(hidden_size // 3)

        self.blocks = nn.ModuleList(
            GenTronBlock(
                hidden_size,
                num_heads,
                mlp_hidden_size,
                conditioning,
                # GenTron interleaved cross-attention: block i attends to encoder i mod k.
                context_dim=hidden_size if uses_cross else None,
                temporal=temporal_layers and i % temporal_every == 0,
                norm_eps=norm_eps,
                temporal_pos_embed=temporal_pos_embed,
                temporal_relative_values=temporal_relative_values,
                temporal_dim=temporal_dim,
                qk_norm=qk_norm,
                pos_query=pos_query,
                mlp_token_conv=mlp_token_conv,
                mlp_token_conv_gain=mlp_token_conv_gain,
                temporal_conv=temporal_conv,
            )
            for i in range(depth)
        )
        self.final_layer = FinalLayer(
            hidden_size, patch_size, self.out_channels, single=conditioning == "adaln-single", norm_eps=norm_eps
        )
        self.gradient_checkpointing = False
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self._init_weights()

    # -- init ----------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        """DiT's init: Xavier linears, patch embed as a linear, N(0, 0.02) embeddings; zero-inits kept."""
        zero_init = {id(p) for m in self.modules() for p in _zero_init_params(m)}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in zero_init:
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for emb in self._scalar_embedders():
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        if hasattr(self, "y_embedder"):
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        if hasattr(self, "token_projections"):
            for proj in self.token_projections:  # PixArt-α: caption projection N(0, 0.02)
                nn.init.normal_(proj.fc1.weight, std=0.02)
                nn.init.normal_(proj.fc2.weight, std=0.02)
        if hasattr(self, "t_block"):
            nn.init.normal_(self.t_block[1].weight, std=0.02)

    def growth_parameter_names(self) -> list[str]:
        """Parameters of the optional layers that are an exact identity while zero (``mlp_token_conv``).

        A checkpoint trained without them can be resumed into a model with them (a curriculum that adds the
        layer in a later stage, as the demo does): every other weight must match exactly (`Trainer._resume`)."""
        return [n for n, _ in self.named_parameters() if ".mlp.token_conv." in n]

    def _scalar_embedders(self) -> list[ScalarEmbedder]:
        return [m for m in self.modules() if isinstance(m, ScalarEmbedder)]

    # -- helpers -------------------------------------------------------------------------------
    def pos_embed(self, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        """Fixed sin-cos embedding for a patch grid, cached per (grid, device)."""
        key = (grid_h, grid_w, str(device))
        if key not in self._pos_cache:
            cfg = self.config
            self._pos_cache[key] = sincos_2d(
                cfg.hidden_size, grid_h, grid_w, cfg.pos_embed_base_size, cfg.pos_embed_interpolation_scale
            ).to(device)[None]
        return self._pos_cache[key]

    def encoder_for_block(self, i: int) -> int:
        """GenTron's interleaved cross-attention: block i attends to encoder i mod k."""
        return i % max(self.num_encoders, 1)

    def unpatchify(self, x: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        p, c = self.config.patch_size, self.out_channels
        x = x.view(x.shape[0], grid_h, grid_w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, grid_h * p, grid_w * p)

    def conditioning_vector(
        self,
        timestep: torch.Tensor,
        pooled: tuple,
        class_labels: Optional[torch.Tensor],
        added_cond_kwargs: Optional[dict],
        batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, t_emb): the adaLN input of every block and of the final layer.

        adaLN-zero modes: c = t_emb (+ pooled text, GenTron) (+ class, DiT), used by blocks and final
        layer alike. adaLN-single: t_emb (+ PixArt micro-conditions) feeds the final layer, and
        c = t_block(t_emb) is the one global modulation shared by all blocks.
        """
        cfg = self.config
        t_emb = self.t_embedder(timestep)
        if cfg.conditioning == "class":
            if class_labels is None:
                raise ValueError("conditioning='class' needs class_labels")
            t_emb = t_emb + self.y_embedder(class_labels.reshape(-1).expand(batch))
        if hasattr(self, "pooled_projections"):
            if len(pooled) != len(self.pooled_projections):
                raise ValueError(
                    f"expected {len(self.pooled_projections)} pooled text embeddings "
                    f"(one per encoder), got {len(pooled)}"
                )
            for proj, p in zip(self.pooled_projections, pooled):
                t_emb = t_emb + proj(p.to(t_emb.dtype))
        if cfg.conditioning != "adaln-single":
            return t_emb, t_emb
        if cfg.micro_conditions:
            kw = added_cond_kwargs or {}
            if kw.get("resolution") is None or kw.get("aspect_ratio") is None:
                raise ValueError("micro_conditions need added_cond_kwargs={'resolution', 'aspect_ratio'}")
            res = self.resolution_embedder(kw["resolution"].reshape(-1).to(timestep.device)).reshape(batch, -1)
            ar = self.aspect_ratio_embedder(kw["aspect_ratio"].reshape(-1).to(timestep.device)).reshape(batch, -1)
            t_emb = t_emb + torch.cat([res, ar], dim=1).to(t_emb.dtype)
        return self.t_block(t_emb), t_emb

    def prepare_context(
        self, encoder_hidden_states: TensorOrTuple, encoder_attention_mask: TensorOrTuple, dtype: torch.dtype
    ) -> tuple[list, list]:
        """Project each encoder's tokens to the model width and turn masks into attention biases."""
        tokens = _as_tuple(encoder_hidden_states)
        if len(tokens) != self.num_encoders:
            raise ValueError(
                f"model has {self.num_encoders} text encoder input(s), got {len(tokens)} encoder_hidden_states"
            )
        masks = _as_tuple(encoder_attention_mask) or (None,) * len(tokens)
        contexts = [proj(t.to(dtype)) for proj, t in zip(self.token_projections, tokens)]
        biases = [_attention_bias(m, dtype) for m in masks]
        if hasattr(self, "text_refiners"):
            contexts = [refine(c, b) for refine, c, b in zip(self.text_refiners, contexts, biases)]
        return contexts, biases

    def fit_text_whitening(self, encoder: int, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        """Fit the fixed whitening of encoder ``encoder``'s tokens (``text_whitening=True``) on a caption sample:
        tokens (B, L, D) and their padding mask (B, L). Done once before training; saved with the weights."""
        if not self.config.text_whitening:
            raise ValueError("model was built with text_whitening=False")
        self.token_projections[encoder].fit_whitening(tokens, mask, self.config.text_whitening_shrinkage)

    def text_whitening_energy(self, encoder: int, tokens: torch.Tensor,
                              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per caption, how far it is from what encoder ``encoder``'s whitening was fitted on (≈ 1: covered; see
        :meth:`TokenProjection.whitened_energy`)."""
        if not self.config.text_whitening:
            raise ValueError("model was built with text_whitening=False")
        return self.token_projections[encoder].whitened_energy(tokens, mask)

    def text_whitening_fitted(self) -> bool:
        return bool(self.config.text_whitening) and all(bool(p.whitening_fitted) for p in self.token_projections)

    def precompute_text_kv(
        self, encoder_hidden_states: TensorOrTuple, encoder_attention_mask: TensorOrTuple = None
    ) -> dict[str, Any]:
        """Per-block cross-attention keys/values, computed once per prompt for sampling.

        Pass the result as ``added_cond_kwargs={"text_kv": ...}`` to skip the token projection and
        K/V matmuls in every denoising step (text is constant across steps).
        """
        contexts, biases = self.prepare_context(encoder_hidden_states, encoder_attention_mask, self.dtype)
        kvs = [
            blk.cross_attn.project_kv(contexts[self.encoder_for_block(i)]) for i, blk in enumerate(self.blocks)
        ]
        return {"kv": kvs, "biases": biases}

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: TensorOrTuple = None,
        encoder_attention_mask: TensorOrTuple = None,
        pooled_projections: TensorOrTuple = None,
        class_labels: Optional[torch.Tensor] = None,
        added_cond_kwargs: Optional[dict[str, Any]] = None,
        return_dict: bool = True,
        motion_free: Optional[torch.Tensor] = None,
    ) -> Union[Transformer2DModelOutput, tuple[torch.Tensor]]:
        """Predict the diffusion target (and the variance interpolation when ``learn_sigma``).

        Args:
            hidden_states: (B, C, H, W) images/latents or (B, C, T, H, W) videos.
            timestep: (B,) or scalar diffusion step.
            encoder_hidden_states / encoder_attention_mask: text tokens (B, L, D) and padding masks
                (B, L; True/1 = keep), a tuple with one entry per encoder.
            pooled_projections: pooled text (B, D) per encoder (adaln-zero / cross-attn modes).
            class_labels: (B,) class ids for ``conditioning='class'`` (``num_classes`` = null class).
            added_cond_kwargs: PixArt micro-conditions ``resolution`` (B, 2) and ``aspect_ratio``
                (B, 1); ``text_kv`` from `precompute_text_kv`.
            motion_free: (B,) bool — samples whose temporal attention uses the identity mask
                (GenTron motion-free guidance, Sec. 3.3.2).
        """
        cfg = self.config
        video = hidden_states.dim() == 5
        if video:
            b, c, num_frames, h, w = hidden_states.shape
            x = hidden_states.transpose(1, 2).reshape(b * num_frames, c, h, w)
        else:
            (b, c, h, w), num_frames = hidden_states.shape, 1
            x = hidden_states
        p = cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h}x{w} is not divisible by patch size {p}")
        if c != cfg.in_channels:
            raise ValueError(f"model expects {cfg.in_channels} input channels, got {c}")
        grid_h, grid_w = h // p, w // p
        dtype = self.x_embedder.weight.dtype
        pos = self.pos_embed(grid_h, grid_w, x.device).to(dtype)
        # contiguous: the transposed patch tokens would otherwise pass their (B, D, N) memory order on to every
        # elementwise op of the residual stream, and each LayerNorm and linear would copy its input (26 copies
        # of the activations per training step of the demo model, against this one).
        x = self.x_embedder(x.to(dtype)).flatten(2).transpose(1, 2).contiguous() + pos

        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=x.device)
        timestep = timestep.reshape(-1).to(x.device).expand(b)
        pooled = _as_tuple(pooled_projections)
        cond, t_emb = self.conditioning_vector(timestep, pooled, class_labels, added_cond_kwargs, b)

        text_kv = (added_cond_kwargs or {}).get("text_kv")
        contexts, biases = [None] * max(self.num_encoders, 1), [None] * max(self.num_encoders, 1)
        if text_kv is not None:
            biases = text_kv["biases"]
        elif cfg.conditioning in ("cross-attn", "adaln-single"):
            contexts, biases = self.prepare_context(encoder_hidden_states, encoder_attention_mask, x.dtype)

        temporal_bias = None
        if video and num_frames > 1:
            cond, t_emb = cond.repeat_interleave(num_frames, 0), t_emb.repeat_interleave(num_frames, 0)
            contexts = [None if t is None else t.repeat_interleave(num_frames, 0) for t in contexts]
            biases = [None if m is None else m.repeat_interleave(num_frames, 0) for m in biases]
            temporal_bias = motion_free_bias(motion_free, num_frames, x.dtype, x.device)

        for i, block in enumerate(self.blocks):
            e = self.encoder_for_block(i)
            kv = None
            if text_kv is not None:
                kv = text_kv["kv"][i]
                if video and num_frames > 1:
                    kv = tuple(z.repeat_interleave(num_frames, 0) for z in kv)
            args = (x, cond, contexts[e], biases[e], kv, num_frames, temporal_bias, pos, (grid_h, grid_w))
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)

        out = self.unpatchify(self.final_layer(x, t_emb), grid_h, grid_w)
        if video:
            out = out.view(b, num_frames, *out.shape[1:]).transpose(1, 2)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)


def motion_free_bias(
    motion_free: Optional[torch.Tensor], num_frames: int, dtype: torch.dtype, device: torch.device
) -> Optional[torch.Tensor]:
    """Temporal attention bias (B, T, T): the identity mask for motion-free samples (GenTron Fig. 3).

    The identity mask lets each frame attend only to itself, so TempSelfAttn still outputs
    W_o·W_v·LN(x) per frame (the paper's definition), rather than being skipped.
    """
    if motion_free is None or not bool(motion_free.any()):
        return None
    eye = torch.eye(num_frames, dtype=torch.bool, device=device)
    allowed = torch.where(motion_free.to(device).bool()[:, None, None], eye, torch.ones_like(eye))
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def _zero_init_params(module: nn.Module) -> list[nn.Parameter]:
    """Parameters the papers initialise to zero (adaLN-zero gates, output projections, final layer)."""
    params: list[nn.Parameter] = []
    if isinstance(module, (GenTronBlock, FinalLayer)) and hasattr(module, "adaLN_modulation"):
        params += list(module.adaLN_modulation[1].parameters())
    if isinstance(module, GenTronBlock):
        for attn in (module.cross_attn, module.temporal_attn):
            if attn is not None:
                params += list(attn.proj.parameters())
        if module.cross_attn is not None and hasattr(module.cross_attn, "q_pos"):
            params.append(module.cross_attn.q_pos.weight)
    if isinstance(module, FinalLayer):
        params += list(module.linear.parameters())
    if isinstance(module, TextRefiner):
        for layer in module.layers:
            params += list(layer["attn"].proj.parameters()) + list(layer["mlp"].fc2.parameters())
    return params


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
