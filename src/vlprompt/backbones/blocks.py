"""The one per-layer loop that every prompt method goes through.

It runs a backbone's own transformer blocks (open_clip ``ResidualAttentionBlock``, timm
``Block``) one by one and, between blocks, does the prompt surgery the methods ask for:

* ``replace[k] = (start, tokens)``: before block ``k`` the positions ``start:start+P`` are
  replaced by ``tokens`` (deep prompts of MaPLe / VPT-deep / deep language prompting);
* ``kv[k] = KVPrompt``: inside block ``k`` the key/value prompts are prepended to the
  projected keys and values (E2VPT); queries are unchanged, so the sequence length is too.

Standard open_clip blocks (pre-norm, packed ``nn.MultiheadAttention``) are evaluated with
their own parameters by :func:`block_forward`, which keeps the batch-first layout in the
projections (several times faster under bf16 on CPU) and takes key/value prompts; with no
prompts it equals the block's own forward to float rounding (tested ≤ 1e-5 against
open_clip). timm ``Block`` s (fused ``attn.qkv`` Linear, optional q/k norms) are called as-is
and, only when a layer has key/value prompts, evaluated by :func:`timm_block_forward` with
their own parameters. Other block types are called as-is and refuse key/value prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import KVPrompt


def _batched(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    return tokens.unsqueeze(0).expand(batch, -1, -1) if tokens.dim() == 2 else tokens


def replace_tokens(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """Return ``x`` (B, L, D) with positions ``start:start+P`` replaced by ``tokens``."""
    tokens = _batched(tokens, x.shape[0]).to(x.dtype)
    end = start + tokens.shape[1]
    return torch.cat([x[:, :start], tokens, x[:, end:]], dim=1)


def attention_with_kv(
    attn: nn.MultiheadAttention, h: torch.Tensor, kv: KVPrompt | None, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """Multi-head self-attention of ``h`` (B, L, D), optionally with key/value prompts prepended.

    Computes ``softmax(Q [K_p; K]^T / sqrt(d)) [V_p; V]`` per head, with the projections
    and output layer of ``attn``. ``attn_mask`` (L, L, additive) is padded with zeros for
    the prompt columns. Projections run on the batch-first tensor as laid out in memory
    (``nn.MultiheadAttention(batch_first=True)`` projects a transposed view instead, which
    under bf16 autocast on CPU falls to a far slower matmul path).
    """
    b, length, d = h.shape
    heads = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if kv is not None:
        k = torch.cat([_batched(kv.key, b).to(k.dtype), k], dim=1)
        v = torch.cat([_batched(kv.value, b).to(v.dtype), v], dim=1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)

    mask = None
    if attn_mask is not None:
        n_p = k.shape[1] - length
        mask = F.pad(attn_mask.to(q.dtype), (n_p, 0), value=0.0)
    o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    o = o.transpose(1, 2).reshape(b, length, d)
    return attn.out_proj(o)


def has_plain_attention(block: nn.Module) -> bool:
    """Whether ``block`` is an open_clip pre-norm block over a packed ``nn.MultiheadAttention``."""
    attn = getattr(block, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention) and attn.in_proj_weight is not None
        and attn.batch_first and not hasattr(block, "ln_1_kv")
        and all(hasattr(block, n) for n in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
    )


def block_forward(
    block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, kv: KVPrompt | None = None,
    capture: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """One pre-norm residual block (open_clip's ``ResidualAttentionBlock`` math) on (B, L, D).

    ``capture``: if a list is given, the block's normalised attention input ``ln_1(x)`` (the
    tensor the attention really consumes, so gradients with respect to it are exact) is
    appended to it — the Grad-CAM hook point of DAPT-G.
    """
    h = block.ln_1(x)
    if capture is not None:
        capture.append(h)
    x = x + block.ls_1(attention_with_kv(block.attn, h, kv, attn_mask))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def is_timm_block(block: nn.Module) -> bool:
    """Whether ``block`` is timm's pre-norm ViT ``Block`` over its standard ``Attention``.

    Checked by type name and module (no timm import here): subclasses and other block types
    (``ResPostBlock``, parallel blocks, rotary attention) have different maths.
    """
    attn = getattr(block, "attn", None)
    return (
        type(block).__name__ == "Block" and type(block).__module__.startswith("timm.")
        and type(attn).__name__ == "Attention" and type(attn).__module__.startswith("timm.")
        and isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None), nn.Linear)
    )


def timm_attention_with_kv(
    attn: nn.Module, h: torch.Tensor, kv: KVPrompt | None, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """timm ``Attention`` on ``h`` (B, L, D) with key/value prompts prepended in head space.

    Same maths as timm's forward (fused qkv, ``q_norm`` / ``k_norm``, scale, optional output
    norm and gate, ``proj``); the prompts ``(P, H·d_h)`` are split into heads and prepended
    to the (normalised) keys and values, so queries and the sequence length are unchanged.
    """
    b, length, _ = h.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    gate = getattr(attn, "gate", None)
    gate = gate(h).sigmoid() if gate is not None else None
    q, k, v = attn.qkv(h).reshape(b, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    mask = attn_mask
    if kv is not None:
        def split(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            t = _batched(t, b).to(like.dtype)
            return t.reshape(b, t.shape[1], heads, head_dim).transpose(1, 2)

        k = torch.cat([split(kv.key, k), k], dim=2)
        v = torch.cat([split(kv.value, v), v], dim=2)
        if attn_mask is not None:
            mask = F.pad(attn_mask.to(q.dtype), (k.shape[2] - length, 0), value=0.0)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    o = attn.norm(o.transpose(1, 2).reshape(b, length, heads * head_dim))
    if gate is not None:
        o = o * gate
    return attn.proj_drop(attn.proj(o))


def timm_block_forward(
    block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv: KVPrompt | None = None
) -> torch.Tensor:
    """One timm ViT ``Block`` (pre-norm, layer scale, drop path) with key/value prompts."""
    x = x + block.drop_path1(block.ls1(timm_attention_with_kv(block.attn, block.norm1(x), kv, attn_mask)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    batch_first: bool = True,
    replace: dict[int, tuple[int, torch.Tensor]] | None = None,
    kv: dict[int, KVPrompt] | None = None,
    capture_last: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run ``blocks`` over ``x`` (B, L, D, batch first) with per-layer prompt surgery.

    Args:
        blocks: the backbone's transformer blocks.
        x: input tokens, batch first.
        attn_mask: additive mask (L, L) passed to every block (the causal text mask).
        batch_first: whether the blocks expect (B, L, D); otherwise they get (L, B, D).
        replace: ``{layer: (start, tokens)}`` replacements applied before that block.
        kv: ``{layer: KVPrompt}`` key/value prompts for that block.
        capture_last: if a list is given, the last block's ``ln_1`` output is appended to it
            (see :func:`block_forward`); the last block must be a plain open_clip block.
    """
    replace = replace or {}
    kv = kv or {}
    for i, block in enumerate(blocks):
        if i in replace:
            start, tokens = replace[i]
            x = replace_tokens(x, start, tokens)
        layer_kv = kv.get(i)
        if layer_kv is not None and layer_kv.key.shape[-2] == 0:
            layer_kv = None
        capture = capture_last if i == len(blocks) - 1 else None
        if has_plain_attention(block):
            x = block_forward(block, x, attn_mask, layer_kv, capture)
        elif capture is not None:
            raise ConfigError("capturing the last block's attention input needs an open_clip pre-norm block")
        elif layer_kv is not None and is_timm_block(block):
            x = timm_block_forward(block, x, attn_mask, layer_kv)
        elif layer_kv is not None:
            raise ConfigError(
                "key/value prompts need open_clip blocks on torch.nn.MultiheadAttention or timm ViT blocks; "
                f"got {type(block).__name__}"
            )
        elif batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


# ---------------------------------------------------------------------- shared prefix (causal text towers)
def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., T, D) -> (..., H, T, dh)."""
    return t.reshape(*t.shape[:-1], heads, t.shape[-1] // heads).transpose(-2, -3)


def _suffix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor,
    mask_sp: torch.Tensor | None, mask_s: torch.Tensor | None, scale: float,
) -> torch.Tensor:
    """Attention of suffix tokens ``q, k, v`` (G, C, S, D) to their group's prefix ``kp, vp`` (G, H, P, dh)
    and to their own sequence's suffix, one softmax over both parts; returns (G, C, S, D) before out_proj.
    The prefix keys and values are used through broadcasting matmuls, never copied per sequence."""
    g, c, s, d = q.shape
    heads, p = kp.shape[1], kp.shape[2]
    dh = d // heads
    qh = q.reshape(g, c * s, heads, dh).transpose(1, 2)  # (G, H, C·S, dh)
    scores_p = ((qh @ kp.transpose(-1, -2)) * scale).reshape(g, heads, c, s, p)
    q5 = qh.reshape(g, heads, c, s, dh)
    k5 = k.reshape(g, c, s, heads, dh).permute(0, 3, 1, 2, 4)  # (G, H, C, S, dh)
    v5 = v.reshape(g, c, s, heads, dh).permute(0, 3, 1, 2, 4)
    scores_s = (q5 @ k5.transpose(-1, -2)) * scale  # (G, H, C, S, S)
    if mask_sp is not None:
        scores_p = scores_p + mask_sp[:s].to(scores_p.dtype)
    if mask_s is not None:
        scores_s = scores_s + mask_s[:s, :s].to(scores_s.dtype)
    weights = torch.cat([scores_p, scores_s], dim=-1).softmax(dim=-1)
    wp, ws = weights[..., :p], weights[..., p:]
    out = (wp.reshape(g, heads, c * s, p) @ vp).reshape(g, heads, c, s, dh) + ws @ v5
    return out.permute(0, 2, 3, 1, 4).reshape(g, c, s, d)


def run_blocks_shared_prefix(
    blocks: nn.ModuleList,
    prefix: torch.Tensor,
    suffix: torch.Tensor | list[tuple[slice, torch.Tensor]],
    attn_mask: torch.Tensor | None,
    replace: dict[int, tuple[int, torch.Tensor]] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """:func:`run_blocks` for sequences that share a prefix, on a causal tower of plain open_clip blocks.

    ``prefix`` (G, P, D) and ``suffix`` (G, C, S, D) are the input tokens (positional embedding added);
    sequence ``(g, c)`` is ``[prefix[g]; suffix[g, c]]``. ``suffix`` may instead be a list of pieces
    ``(groups, x)``: ``x`` (G_j, C_j, S_j, D) continues the prefixes ``prefix[groups]`` (a slice), so
    classes of different lengths or of different groups run in one pass. With a causal ``attn_mask`` the
    prefix's hidden states are the same for every sequence of a group at every layer, so they are computed
    once per group. Every linear layer runs once per block on all tokens together (one weight cast under
    autocast). ``replace`` may only touch prefix positions (MaPLe's deep text prompts). Returns the suffix
    hidden states after the last block: (G, C, S, D), or one tensor per piece.
    """
    single = isinstance(suffix, torch.Tensor)
    pieces = [(slice(None), suffix)] if single else list(suffix)
    g, p, d = prefix.shape
    mask_p = mask_sp = mask_s = None
    if attn_mask is not None:
        top = p + max(x.shape[2] for _, x in pieces)
        mask_p, mask_sp, mask_s = attn_mask[:p, :p], attn_mask[p:top, :p], attn_mask[p:top, p:top]
    shapes = [x.shape for _, x in pieces]
    sizes = [g * p] + [x.shape[0] * x.shape[1] * x.shape[2] for _, x in pieces]

    def split(t: torch.Tensor) -> list[torch.Tensor]:
        parts = t.split(sizes)
        return [parts[0].reshape(g, p, -1)] + [x.reshape(*sh[:3], -1) for x, sh in zip(parts[1:], shapes, strict=True)]

    x = torch.cat([prefix.reshape(-1, d)] + [x.reshape(-1, d) for _, x in pieces])  # every token, flat
    for i, block in enumerate(blocks):
        if replace and i in replace:
            start, tokens = replace[i]
            if start + _batched(tokens, 1).shape[1] > p:
                raise ConfigError("shared-prefix text: a deep prompt reaches past the shared prefix")
            xp = replace_tokens(x[: g * p].reshape(g, p, d), start, tokens)
            x = torch.cat([xp.reshape(-1, d), x[g * p :]])
        if not has_plain_attention(block):
            raise ConfigError(f"shared-prefix text needs open_clip pre-norm blocks; got {type(block).__name__}")
        attn = block.attn
        heads = attn.num_heads
        scale = (d // heads) ** -0.5
        qkv = split(F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias))
        qp, kp, vp = (_heads(t, heads) for t in qkv[0].chunk(3, dim=-1))  # (G, H, P, dh)
        outs = [F.scaled_dot_product_attention(qp, kp, vp, attn_mask=None if mask_p is None else mask_p.to(qp.dtype))
                .transpose(1, 2).reshape(-1, d)]
        for (groups, _), t in zip(pieces, qkv[1:], strict=True):
            q, k, v = t.chunk(3, dim=-1)
            outs.append(_suffix_attention(q, k, v, kp[groups], vp[groups], mask_sp, mask_s, scale).reshape(-1, d))
        x = x + block.ls_1(attn.out_proj(torch.cat(outs)))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    out = split(x)[1:]
    return out[0] if single else out
