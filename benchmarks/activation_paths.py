"""Feature differences per way of loading OpenAI-style weights, vs open_clip's own QuickGELU model.

The same random weights (open_clip's init, seed 0, standing in for an OpenAI release) are saved as an
OpenAI TorchScript archive, an open_clip state dict (``.pt``), a plain ``.safetensors``, a
``vlprompt convert``-ed ``.safetensors`` (from the archive) and a ``.safetensors`` converted with
``--quick-gelu``, then loaded with :func:`vlprompt.load_backbone` automatically, with the ``-quickgelu``
name and with ``force_quick_gelu=True``. For each load: the max abs difference of image and text
features from open_clip's QuickGELU model, the activation built, and the warnings. ``gelu_reference``
is what a GELU build of the same weights gives (the silent error this guards against).

``--arch`` must be an architecture open_clip ships an ``openai`` QuickGELU tag for (ViT-B-16, ViT-B-32,
RN50 ...), or ``tiny-clip``, which is given such a tag here as in the tests. Writes JSON.

    python benchmarks/activation_paths.py --arch ViT-B-16 --out activation_paths.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import open_clip
import torch
from open_clip import pretrained as oc_pretrained
from safetensors.torch import save_file

import vlprompt as vp
from vlprompt.backbones.checkpoints import convert_checkpoint, openai_quick_gelu_archs
from vlprompt.backbones.configs import register_configs
from vlprompt.errors import VlpromptWarning


class _Archive(torch.nn.Module):
    """A CLIP model's modules under OpenAI's key names, traced into a TorchScript archive like OpenAI's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _features(model: torch.nn.Module, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, size, size, generator=g)
    text = torch.randint(1, 49407, (2, 77), generator=g)
    text[:, 12] = 49407
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


def _diff(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    return {"image": float((a[0] - b[0]).abs().max()), "text": float((a[1] - b[1]).abs().max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny-clip")
    ap.add_argument("--out", default="activation_paths.json")
    args = ap.parse_args(argv)
    register_configs()
    if args.arch == "tiny-clip":
        oc_pretrained._PRETRAINED["tiny-clip"] = {"openai": oc_pretrained._pcfg(hf_hub="x/y/", quick_gelu=True)}
        openai_quick_gelu_archs.cache_clear()
    if args.arch not in openai_quick_gelu_archs():
        print(f"{args.arch} has no openai QuickGELU tag in open_clip", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    ref = _frozen(open_clip.create_model(args.arch, pretrained=None, force_quick_gelu=True))
    size = int(ref.visual.image_size[0] if isinstance(ref.visual.image_size, tuple) else ref.visual.image_size)
    ref_feats = _features(ref, size)
    gelu = open_clip.create_model(args.arch, pretrained=None)
    gelu.load_state_dict(ref.state_dict())
    result: dict = {"arch": args.arch, "torch": torch.__version__, "open_clip": open_clip.__version__,
                    "gelu_reference": _diff(_features(_frozen(gelu), size), ref_feats), "loads": []}
    del gelu
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
        files = {"torchscript": d / "openai.pt", "statedict": d / "sd.pt", "safetensors": d / "sd.safetensors"}
        torch.save(sd, files["statedict"])
        save_file(sd, str(files["safetensors"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(_Archive(ref), torch.randn(1, 3, size, size)), str(files["torchscript"]))
            files["converted"] = convert_checkpoint(files["torchscript"], d / "conv.safetensors", trust_checkpoint=True)
            files["converted --quick-gelu"] = convert_checkpoint(files["statedict"], d / "conv_q.safetensors",
                                                                 trust_checkpoint=True, quick_gelu=True)
        ways = {"auto": (args.arch, None), "-quickgelu name": (f"{args.arch}-quickgelu", None),
                "--quick-gelu": (args.arch, True)}
        for fmt, path in files.items():
            for way, (name, force) in ways.items():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    bb = vp.load_backbone(name, weights=path, trust_checkpoint=True, force_quick_gelu=force)
                row = {"file": fmt, "way": way, "activation": "QuickGELU" if bb.quick_gelu else "GELU",
                       "max_abs": _diff(_features(bb.model, size), ref_feats),
                       "warnings": [str(w.message)[:90] + " ..." for w in caught
                                    if issubclass(w.category, VlpromptWarning)]}
                result["loads"].append(row)
                print(f"{fmt:24s} {way:16s} {row['activation']:9s} image {row['max_abs']['image']:.2e} "
                      f"text {row['max_abs']['text']:.2e} warnings {len(row['warnings'])}", flush=True)
                del bb
    g = result["gelu_reference"]
    print(f"GELU build of the same weights: image {g['image']:.2e} text {g['text']:.2e}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
