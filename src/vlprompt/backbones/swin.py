"""timm Swin Transformer image towers with VPT-shallow window prompts (no copied model code).

``load_backbone("timm:swin_base_patch4_window7_224", weights=...)`` builds timm's
``SwinTransformer`` (``num_classes=0``, nothing downloaded) and exposes it through the image
seams. Without prompts :meth:`TimmSwinBackbone.encode_image` is timm's ``forward_features`` +
``forward_head(pre_logits=True)`` (final norm, global average pool).

Visual prompts (VPT on Swin, the supported subset): ``p`` prompt tokens of the stage-1 width
are prepended to **every window** of every block of stage 1. Inside a block they go through
the block's own ``norm1`` / window attention / ``norm2`` / MLP with the patch tokens; the
window attention (:func:`window_attention_with_prompts`, timm's parameters) gives prompt pairs
no relative-position bias and no shift mask (prompts see, and are seen by, every token of the
window); each image's prompt outputs are averaged over its windows and carried to the next
block. The prompts are dropped before stage 2's patch merging. Per-stage deep prompts and
key-value prompts are not supported on Swin (``prompt_kinds = ("shallow",)``; see
``docs/deviations.md`` V13).

Weights: timm / Microsoft Swin state dicts (``{"model": ...}`` of the original repository,
e.g. ``swin_base_patch4_window7_224_22k.pth``, VPT's ``swinb_imagenet22k_224``) pass through
timm's Swin ``checkpoint_filter_fn``; the classifier is dropped; the load is strict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import ImageOutput, VisualPrompts
from .vit import ImageOnlyBackbone


def window_attention_with_prompts(
    attn: nn.Module, x: torch.Tensor, n_prompts: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """timm ``WindowAttention`` on ``x`` (B·nW, P + A, C) whose first ``n_prompts`` tokens are prompts.

    Same maths as timm's forward (fused qkv, scale, relative position bias, shift mask, proj);
    bias and mask are zero-padded for the prompt rows and columns.
    """
    b_, n, _ = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b_, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = F.pad(attn._get_rel_pos_bias(), (n_prompts, 0, n_prompts, 0))  # (1, heads, N, N)
    if mask is not None:
        n_win = mask.shape[0]
        mask = F.pad(mask, (n_prompts, 0, n_prompts, 0)).to(bias.dtype)
        bias = (bias.unsqueeze(1) + mask.view(1, n_win, 1, n, n)).expand(b_ // n_win, -1, -1, -1, -1)
        bias = bias.reshape(b_, heads, n, n)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=attn.scale)
    return attn.proj_drop(attn.proj(o.transpose(1, 2).reshape(b_, n, -1)))


def prompted_swin_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm ``SwinTransformerBlock`` on ``x`` (B, H, W, C) with prompts (B, P, C) in every window.

    Returns the block's outputs for the patch tokens and the prompts (mean over each image's windows).
    """
    b, h, w, c = x.shape
    n_p = prompts.shape[1]
    ws = block.window_size
    shift = tuple(block.shift_size)
    hx, hp = block.norm1(x), block.norm1(prompts)
    if any(shift):
        hx = torch.roll(hx, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    pad_h, pad_w = (ws[0] - h % ws[0]) % ws[0], (ws[1] - w % ws[1]) % ws[1]
    hx = F.pad(hx, (0, 0, 0, pad_w, 0, pad_h))
    hp_, wp_ = hx.shape[1], hx.shape[2]
    from timm.models.swin_transformer import window_partition, window_reverse

    windows = window_partition(hx, ws).view(-1, ws[0] * ws[1], c)  # (B·nW, A, C), image-major
    n_win = windows.shape[0] // b
    tokens = torch.cat([hp.repeat_interleave(n_win, dim=0), windows], dim=1)
    mask = block.get_attn_mask(hx) if getattr(block, "dynamic_mask", False) else block.attn_mask
    out = window_attention_with_prompts(block.attn, tokens, n_p, mask)
    out_p = out[:, :n_p].reshape(b, n_win, n_p, c).mean(1)
    out_x = window_reverse(out[:, n_p:].reshape(-1, ws[0], ws[1], c), ws, hp_, wp_)[:, :h, :w]
    if any(shift):
        out_x = torch.roll(out_x, shifts=shift, dims=(1, 2))
    x = x + block.drop_path1(out_x)
    prompts = prompts + block.drop_path1(out_p)
    x = x + block.drop_path2(block.mlp(block.norm2(x)))
    prompts = prompts + block.drop_path2(block.mlp(block.norm2(prompts)))
    return x, prompts


class TimmSwinBackbone(ImageOnlyBackbone):
    """A frozen timm ``SwinTransformer`` behind vlprompt's image seams (no text tower).

    Supports the linear probe and ``vpt-shallow`` (window prompts in stage 1, see the module
    docstring); ``vpt-deep`` / ``e2vpt`` are refused at build time.

    Example:
        >>> bb = load_backbone("timm:swin_base_patch4_window7_224", weights="swin_base_patch4_window7_224_22k.pth",
        ...                    trust_checkpoint=True)
        >>> model = vp.build_method("vpt-shallow", bb, task.classnames, num_tokens=5)
    """

    prompt_kinds = ("shallow",)

    def __init__(
        self, model: nn.Module, name: str, weights_id: str = "random", model_kwargs: dict | None = None
    ) -> None:
        super().__init__(name)
        from timm.models.swin_transformer import SwinTransformer

        if not isinstance(model, SwinTransformer):
            raise ConfigError(f"{name}: {type(model).__name__} is not a timm SwinTransformer")
        self._adopt(model, weights_id, model_kwargs)
        self.n_vision_layers = sum(len(stage.blocks) for stage in model.layers)
        self.num_prefix_tokens = 0
        self.vision_heads = int(model.layers[0].blocks[0].attn.num_heads)

    def encode_image(
        self,
        images: torch.Tensor,
        prompts: VisualPrompts | None = None,
        return_tokens: bool = False,
        normalize: bool = False,
    ) -> torch.Tensor | ImageOutput:
        """Pooled features (final norm + global average pool), optionally with stage-1 window prompts.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            prompts: shallow prompt tokens ``(P, C_1)`` or ``(B, P, C_1)`` (the layout is ignored:
                window prompts have no position); deep and key/value prompts are refused.
            return_tokens: also return the final-stage patch tokens ``(B, h·w, C)`` after the norm.
            normalize: L2-normalise the pooled feature.
        """
        m = self.model
        prompts = prompts or VisualPrompts()
        if prompts.deep or prompts.kv:
            raise ConfigError(
                f"{self.name}: Swin supports shallow window prompts only (stage 1); per-stage deep prompts "
                "and key/value prompts are not implemented — use vpt-shallow or the linear probe"
            )
        x = m.patch_embed(images)
        if prompts.tokens is None:
            x = m.layers(x)
        else:
            p = prompts.tokens
            p = (p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p).to(x.dtype)
            first = m.layers[0]
            x = first.downsample(x)
            for block in first.blocks:
                x, p = prompted_swin_block(block, x, p)
            for stage in m.layers[1:]:
                x = stage(x)
        x = m.norm(x)
        pooled = m.forward_head(x, pre_logits=True)
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        if return_tokens:
            return ImageOutput(pooled, x.flatten(1, 2))
        return pooled
