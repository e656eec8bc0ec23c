"""Image-feature cache for methods whose image tower is frozen and unprompted.

Training uses N augmented views per image (``TrainConfig.feature_views``); evaluation and
the linear probe use the plain test view. Each set of features is computed once and stored
under the cache dir, keyed by backbone + weights id + transform + view + augmentation seed
+ precision + the image files (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader

from .. import progress
from ..backbones.base import Backbone
from ..cache import cache_root
from ..data.images import ImageDataset
from ..data.task import Sample
from ..data.transforms import image_norm, test_transform, train_transform, transform_id
from ..errors import ConfigError
from .precision import autocast
from .run import OUTPUT_ERRNOS, remove_stale_temps

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return cache_root() / "features"


def _file_sig(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, -1, -1)


class FeatureCache:
    """Computes and stores image features of sample lists.

    Example:
        >>> cache = FeatureCache(bb, precision="bf16", device=torch.device("cpu"))
        >>> test_feats = cache.get(task.test, "test")          # (N, embed_dim), float32, CPU
        >>> view3 = cache.get(task.train, "train", view=3, seed=1)
    """

    def __init__(
        self, backbone: Backbone, precision: str, device: torch.device, cache_dir: str | Path | None = None,
        batch_size: int = 100, num_workers: int = 0, persist: bool = True,
    ) -> None:
        self.backbone = backbone
        self.precision = precision
        self.device = device
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.persist = persist
        self._memo: dict[str, torch.Tensor] = {}
        self.computed = 0  # number of feature sets computed (not read from cache)

    def key(self, samples: list[Sample], kind: str, view: int, seed: int, augment: str = "clip") -> str:
        desc = {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights_id,
            "transform": transform_id(kind, self.backbone.image_size, *image_norm(self.backbone), augment=augment),
            "view": view if kind == "train" else 0,
            "seed": seed if kind == "train" else 0,
            "precision": self.precision,
            "files": [_file_sig(s.path) for s in samples],
        }
        model_kwargs = getattr(self.backbone, "model_kwargs", None)
        if model_kwargs:  # e.g. timm global_pool: other features from the same weights (keys without them unchanged)
            desc["model_kwargs"] = model_kwargs
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()

    def get(
        self, samples: list[Sample], kind: str = "test", view: int = 0, seed: int = 0,
        augment: str | Sequence[str] = "clip",
    ) -> torch.Tensor:
        """Features ``(len(samples), embed_dim)`` of the plain (``test``) or an augmented view.

        ``augment`` is the training augmentation policy of an augmented view
        (:data:`vlprompt.data.transforms.AUGMENTS`), or one policy per sample (a task group whose
        members differ): the samples of each policy are then cached under that policy's key and
        the features put back in sample order.
        """
        if not samples:
            return torch.zeros(0, self.backbone.embed_dim)
        if not isinstance(augment, str):
            policies = list(augment)
            if len(policies) != len(samples):
                raise ConfigError(f"augment lists {len(policies)} policies for {len(samples)} samples")
            distinct = list(dict.fromkeys(policies))
            if kind != "train" or len(distinct) == 1:
                augment = distinct[0]
            else:
                return self._get_per_policy(samples, view, seed, policies, distinct)
        key = self.key(samples, kind, view, seed, augment)
        if key in self._memo:
            return self._memo[key]
        path = self.dir / key[:2] / f"{key}.safetensors"
        feats = self._read(path, len(samples)) if self.persist and path.exists() else None
        if feats is None:
            what = "plain" if kind == "test" else f"augmented view {view} ({augment})"
            kept = f" -> {self.dir}" if self.persist else ""
            progress.say(f"extracting image features: {len(samples)} images, {what}, {self.backbone.name}{kept}")
            feats = self._compute(samples, kind, view, seed, augment)
            if self.persist:
                self._write(path, feats)
        self._memo[key] = feats
        return feats

    def _read(self, path: Path, n: int) -> torch.Tensor | None:
        """A cached feature file, or ``None`` (with a warning) when it is damaged: then it is recomputed."""
        try:
            feats = load_file(str(path))["features"]
            expected = (n, self.backbone.embed_dim)
            if tuple(feats.shape) != expected:
                raise ValueError(f"shape {tuple(feats.shape)}, expected {expected}")
            if not bool(torch.isfinite(feats).all()):
                raise ValueError("non-finite values")
        except OSError:
            raise
        except Exception as exc:  # truncated or corrupt (safetensors' SafetensorError, no "features" key ...)
            logger.warning("feature cache: %s is unreadable (%s); recomputing it", path, exc)
            return None
        return feats

    def _write(self, path: Path, feats: torch.Tensor) -> None:
        """Store features (temp file + rename). The cache is optional: a read-only cache folder or a
        full disk only warns; the features stay in memory for this run."""
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path.parent)
            with open(tmp, "wb") as f:  # Python I/O: a full disk is an OSError, not a library error
                f.write(save({"features": feats.contiguous()}))
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
                logger.warning("feature cache: cannot write %s (%s); features are not cached",
                               path, OUTPUT_ERRNOS[exc.errno])
                return
            raise

    def _get_per_policy(
        self, samples: list[Sample], view: int, seed: int, policies: list[str], distinct: list[str]
    ) -> torch.Tensor:
        out = torch.empty(len(samples), self.backbone.embed_dim)
        for policy in distinct:
            idx = [i for i, p in enumerate(policies) if p == policy]
            out[idx] = self.get([samples[i] for i in idx], "train", view, seed, policy)
        return out

    @torch.no_grad()
    def _compute(self, samples: list[Sample], kind: str, view: int, seed: int, augment: str) -> torch.Tensor:
        self.computed += 1
        size = self.backbone.image_size
        norm = image_norm(self.backbone)
        tf = train_transform(size, *norm, augment=augment) if kind == "train" else test_transform(size, *norm)
        gen = torch.Generator().manual_seed(1_000_003 * seed + view)
        loader = DataLoader(
            ImageDataset(samples, tf), batch_size=self.batch_size, shuffle=False,
            num_workers=self.num_workers, generator=gen,
        )
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1_000_003 * seed + view)
            for images, _, _ in loader:
                with autocast(self.precision, self.device):
                    out.append(self.backbone.encode_image(images.to(self.device)).float().cpu())
        return torch.cat(out)
