"""CLIP backbones over open_clip models, with prompt seams (no copied model code).

The towers are open_clip's own modules; this file only decides what goes into them:

* text: ``embed`` (token embedding) → ``encode_text`` adds the positional embedding, runs
  the resblocks through :func:`~vlprompt.backbones.blocks.run_blocks` (deep prompts replace
  positions ``1..n_ctx``), applies ``ln_final`` to the EOT token and projects it. The causal
  mask means the EOT feature depends only on tokens before it, so the sequence is cut at
  the longest EOT in the batch: identical output, several times cheaper.
* vision (ViT): conv patches + CLS + positional embedding, optional prompt tokens, ``ln_pre``,
  the shared block loop, prompts removed, open_clip's own ``_pool`` + projection.
* vision (ModifiedResNet): the tower's own forward; visual prompts are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from ..errors import ConfigError
from .base import Backbone, ImageOutput, VisualPrompts
from .blocks import has_plain_attention, run_blocks, run_blocks_shared_prefix


def _length_buckets(eot: list[int], prefix_len: int, overhead: int = 32) -> list[tuple[list[int], int]]:
    """Classes grouped by sequence length for :meth:`ClipBackbone.encode_text_shared`: ``[(indices, end)]``
    with ``end`` = the group's longest EOT + 1. Adjacent lengths are merged while padding them to the
    longer one costs fewer tokens than keeping them apart, a separate bucket being charged a fixed
    ``prefix_len + overhead`` tokens (a heuristic: the buckets share one pass, but each adds its own
    attention calls)."""
    by_len: dict[int, list[int]] = {}
    for i, e in enumerate(eot):
        by_len.setdefault(e + 1, []).append(i)
    buckets: list[tuple[list[int], int]] = []
    for end in sorted(by_len):
        idx = by_len[end]
        if buckets:
            prev, prev_end = buckets[-1]
            merged = len(prev + idx) * (end - prefix_len)
            apart = len(prev) * (prev_end - prefix_len) + len(idx) * (end - prefix_len) + prefix_len + overhead
            if merged <= apart:
                buckets[-1] = (prev + idx, end)
                continue
        buckets.append((list(idx), end))
    return buckets


class ClipBackbone(Backbone):
    """A frozen open_clip ``CLIP`` model exposed through vlprompt's backbone seams.

    Example:
        >>> import open_clip
        >>> model = open_clip.create_model("ViT-B-16")
        >>> bb = ClipBackbone(model, open_clip.get_tokenizer("ViT-B-16"), name="ViT-B-16")
        >>> tok = bb.tokenize(["a photo of a cat."])
        >>> feat = bb.encode_text(bb.embed(tok), bb.eot_index(tok))
    """

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, weights_id: str = "random") -> None:
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "visual"):
            if not hasattr(model, attr):
                raise ConfigError(
                    f"{name}: unsupported open_clip model type {type(model).__name__}; "
                    "vlprompt needs a CLIP with the built-in text transformer"
                )
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise ConfigError(f"{name}: text pooling {model.text_pool_type!r} is not supported (need argmax/EOT)")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._tokenizer = tokenizer
        self.name = name
        self.weights_id = weights_id
        visual = model.visual
        self.is_vit = isinstance(visual, VisionTransformer)
        if not self.is_vit and not isinstance(visual, ModifiedResNet):
            raise ConfigError(f"{name}: unsupported image tower {type(visual).__name__}")
        self.embed_dim = int(model.text_projection.shape[1])
        self.text_width = int(model.token_embedding.weight.shape[1])
        self.context_length = int(model.positional_embedding.shape[0])
        self.n_text_layers = len(model.transformer.resblocks)
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        if self.is_vit:
            self.vision_width = int(visual.conv1.out_channels)
            self.n_vision_layers = len(visual.transformer.resblocks)
            self.patch_size = int(visual.conv1.kernel_size[0])
            self.vision_heads = int(visual.transformer.resblocks[0].attn.num_heads)
        else:
            self.vision_width = None
            self.n_vision_layers = 0
            self.patch_size = None
            self.vision_heads = None
        self.supports_visual_prompts = self.is_vit

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``(N, context_length)`` from open_clip's tokenizer (CLIP BPE)."""
        return self._tokenizer(list(texts))

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the end-of-text token (the largest id, as in CLIP)."""
        return tokens.argmax(dim=-1)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings ``(N, L, text_width)``."""
        return self.model.token_embedding(tokens.to(self.device))

    def encode_text(
        self,
        embeds: torch.Tensor,
        eot_idx: torch.Tensor,
        deep_prompts: dict[int, torch.Tensor] | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Text features from an embedding sequence.

        Args:
            embeds: ``(N, L, text_width)`` token embeddings (learned context already inserted).
            eot_idx: ``(N,)`` EOT positions.
            deep_prompts: ``{layer: (n_ctx, width)}``; before block ``layer`` positions
                ``1..n_ctx`` are replaced by the given tokens.
            normalize: L2-normalise the output.

        Returns:
            ``(N, embed_dim)`` features, equal to open_clip's ``encode_text`` without prompts.
        """
        m = self.model
        length = int(eot_idx.max().item()) + 1
        x = embeds[:, :length] + m.positional_embedding[:length].to(embeds.dtype)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        replace = {k: (1, t) for k, t in (deep_prompts or {}).items()}
        x = run_blocks(
            m.transformer.resblocks, x, attn_mask=mask, batch_first=m.transformer.batch_first, replace=replace
        )
        x = x[torch.arange(x.shape[0], device=x.device), eot_idx.to(x.device)]
        x = m.ln_final(x)
        proj = m.text_projection
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj.to(x.dtype)
        return F.normalize(x, dim=-1) if normalize else x

    @property
    def supports_prefix_sharing(self) -> bool:
        """Whether :meth:`encode_text_shared` applies: a causal text mask and plain open_clip blocks."""
        m = self.model
        return m.attn_mask is not None and all(has_plain_attention(b) for b in m.transformer.resblocks)

    def encode_text_shared(
        self,
        prefix: torch.Tensor,
        suffix: torch.Tensor,
        eot_idx: torch.Tensor,
        deep_prompts: dict[int, torch.Tensor] | None = None,
        normalize: bool = False,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text features of sequences ``[prefix[g]; suffix[c]]`` with the prefix computed once per group.

        Equal to :meth:`encode_text` on the concatenated sequences (the causal mask makes the prefix's
        hidden states independent of what follows), at a fraction of the cost when many classes share
        one learned context. Classes run in length buckets, all in one pass through the tower.

        Args:
            prefix: ``(G, P, width)`` shared leading embeddings (SOS + learned context), one per group.
            suffix: ``(C, L - P, width)`` or ``(G, C, L - P, width)`` the rest of each sequence.
            eot_idx: ``(C,)`` EOT positions in the full sequence (all at or after ``P``).
            deep_prompts: ``{layer: (n_ctx, width)}`` replacing positions ``1..n_ctx`` (inside the prefix).
            normalize: L2-normalise the output.
            groups: ``(C,)`` group of each class: class ``c`` continues ``prefix[groups[c]]`` only (e.g.
                SoftCPT's context per task); ``suffix`` is then ``(C, L - P, width)``.

        Returns:
            ``(G, C, embed_dim)`` features, or ``(C, embed_dim)`` with ``groups``.
        """
        if not self.supports_prefix_sharing:
            raise ConfigError(f"{self.name}: prefix sharing needs a causal text tower of open_clip blocks")
        m = self.model
        g, p = prefix.shape[0], prefix.shape[1]
        if groups is None and suffix.dim() == 3:
            suffix = suffix.unsqueeze(0).expand(g, -1, -1, -1)
        eot = eot_idx.to(prefix.device)
        if int(eot.min()) < p:
            raise ConfigError("shared-prefix text: an EOT lies inside the shared prefix")
        length = int(eot.max().item()) + 1
        pos = m.positional_embedding[:length].to(prefix.dtype)
        xp = prefix + pos[:p]
        replace = {k: (1, t) for k, t in (deep_prompts or {}).items()}
        pieces, where = [], []
        if groups is None:
            for idx, end in _length_buckets(eot.tolist(), p):  # classes of similar length together: less padding
                rows = torch.tensor(idx, device=prefix.device)
                pieces.append((slice(None), suffix[:, rows, : end - p].to(prefix.dtype) + pos[p:end]))
                where.append(rows)
        else:
            grp = groups.to(prefix.device)
            for gi in grp.unique().tolist():
                own = torch.nonzero(grp == gi).flatten()
                for idx, end in _length_buckets(eot[own].tolist(), p):
                    rows = own[torch.tensor(idx, device=prefix.device)]
                    pieces.append((slice(gi, gi + 1), suffix[rows, : end - p].to(prefix.dtype).unsqueeze(0)
                                   + pos[p:end]))
                    where.append(rows)
        outs = run_blocks_shared_prefix(m.transformer.resblocks, xp, pieces, m.attn_mask, replace)
        picked = [o[:, torch.arange(len(r), device=o.device), eot[r] - p] for o, r in zip(outs, where, strict=True)]
        order = torch.argsort(torch.cat(where))
        x = torch.cat(picked, dim=1)[:, order]  # (G or 1, C, width) in class order
        x = m.ln_final(x)
        proj = m.text_projection
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj.to(x.dtype)
        x = F.normalize(x, dim=-1) if normalize else x
        return x[0] if groups is not None else x

    # ---------------------------------------------------------------- vision
    def _vit_tokens(self, images: torch.Tensor) -> torch.Tensor:
        v = self.model.visual
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        return x + v.positional_embedding.to(x.dtype)

    def encode_image(
        self,
        images: torch.Tensor,
        prompts: VisualPrompts | None = None,
        return_tokens: bool = False,
        normalize: bool = False,
        return_block_input: bool = False,
    ) -> torch.Tensor | ImageOutput:
        """Image features, optionally with visual prompts.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            prompts: shallow/deep/key-value prompts (ViT towers only).
            return_tokens: also return the patch tokens (after ``ln_post``, prompts removed).
            normalize: L2-normalise the pooled feature.
            return_block_input: also return the last block's ``ln_1`` output (Grad-CAM,
                ViT towers only; see :class:`ImageOutput`).

        Returns:
            ``(B, embed_dim)`` features (equal to open_clip's ``encode_image`` without
            prompts), or an :class:`ImageOutput` when ``return_tokens`` or ``return_block_input``.
        """
        v = self.model.visual
        if not self.is_vit:
            if prompts is not None:
                raise ConfigError(
                    f"{self.name}: visual prompts need a ViT image tower; this backbone has a "
                    "ModifiedResNet (RN50-style) tower"
                )
            if return_tokens or return_block_input:
                raise ConfigError(f"{self.name}: patch tokens are only available for ViT image towers")
            pooled = v(images)
            return F.normalize(pooled, dim=-1) if normalize else pooled
        x = self._vit_tokens(images)
        x = v.patch_dropout(x)
        n_tok = x.shape[1]
        prompts = prompts or VisualPrompts()
        n_p = prompts.n_tokens
        start = n_tok if prompts.layout == "append" else 1
        if prompts.tokens is not None:
            p = prompts.tokens
            p = (p.unsqueeze(0).expand(x.shape[0], -1, -1) if p.dim() == 2 else p).to(x.dtype)
            x = torch.cat([x[:, :start], p, x[:, start:]], dim=1)
        elif prompts.deep:
            raise ConfigError("deep visual prompts need shallow prompt tokens at layer 0")
        x = v.ln_pre(x)
        replace = {k: (start, t) for k, t in prompts.deep.items()}
        captured: list[torch.Tensor] | None = [] if return_block_input else None
        x = run_blocks(
            v.transformer.resblocks, x, batch_first=v.transformer.batch_first, replace=replace, kv=prompts.kv,
            capture_last=captured,
        )
        if n_p:
            x = torch.cat([x[:, :start], x[:, start + n_p :]], dim=1)
        pooled, tokens = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        if return_block_input:
            grid = tuple(int(g) for g in v.grid_size)
            return ImageOutput(pooled, tokens, captured[0], 1 + (n_p if prompts.layout == "after_cls" else 0), grid)
        return ImageOutput(pooled, tokens) if return_tokens else pooled

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` of the checkpoint (100 for OpenAI CLIP)."""
        return self.model.logit_scale.exp()
