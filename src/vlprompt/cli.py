"""Command line: a thin layer over the API (``vlprompt --help``).

Commands: ``methods``, ``datasets``, ``backbones``, ``train``, ``eval``, ``predict``, ``convert``, ``demo``, the
protocols (``base2new``, ``few-shot``, ``multitask``, ``cross-dataset``, ``domain-gen``, ``vtab``, ``data-efficient``),
``sweep``, ``report``.
User errors print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from .errors import ConfigError, VlpromptError, VlpromptWarning
from .progress import quiet_if


def _parse_options(pairs: list[str], method: str) -> dict[str, Any]:
    """``["n_ctx=4", "ctx_init=a photo of a"]`` → dict typed by the fields of ``method``'s Config
    (:func:`vlprompt.methods.parse_method_options`: unknown keys and wrong types fail here, before any work)."""
    from .methods import parse_method_options

    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"method option {pair!r} is not KEY=VALUE (e.g. -o n_ctx=4)")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return parse_method_options(method, out)


_OPT_HELP = ("method option, parsed by the type of its Config field (e.g. -o n_ctx=4, -o csc=true, "
             "-o dept_weight=0.5, lists as a,b or [\"a\", \"b\"]); `vlprompt methods NAME` lists them")


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="tiny-clip",
                   help="open_clip architecture (a -quickgelu suffix builds it with QuickGELU, e.g. "
                        "ViT-B-16-quickgelu), tiny-clip, effnet-minilm or timm:<ViT> (`vlprompt backbones` lists them)")
    p.add_argument("--weights", help="checkpoint: .safetensors, open_clip state dict, OpenAI .pt archive")
    p.add_argument("--pretrained", metavar="TAG",
                   help="pretrained tag fetched by open_clip / timm into the Hugging Face cache, e.g. openai "
                        "(offline once cached; `vlprompt backbones` lists the tags)")
    _add_quick_gelu(p)
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickle-based checkpoints")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--model-kwargs", action="append", default=[], metavar="KEY=VALUE",
                   help="timm backbones: extra timm.create_model argument, value read as YAML (e.g. "
                        "--model-kwargs global_pool=avg for MAE as VPT); recorded in the run, reused by eval/predict")


def _model_kwargs(pairs: list[str] | None) -> dict[str, Any]:
    """``["global_pool=avg", "img_size=32"]`` -> ``{"global_pool": "avg", "img_size": 32}`` (values as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-kwargs {pair!r} is not KEY=VALUE (e.g. --model-kwargs global_pool=avg)")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _add_quick_gelu(p: argparse.ArgumentParser, what: str = "build the CLIP towers with") -> None:
    p.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{what} QuickGELU (OpenAI's weights) / GELU (--no-quick-gelu); default: from the "
                        "architecture name, the pretrained tag or the weights file, with a warning when unknown")


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("epochs", "lr", "batch_size", "optimizer", "precision", "feature_views", "cache_dir", "seed",
            "device", "num_workers", "weight_decay", "warmup_epochs", "scheduler", "grad_clip", "log_to", "log_project")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _default(name: str) -> str:
    """``(default: X)`` of a training option: the TrainConfig default, which a --preset may replace."""
    from .engine.config import TrainConfig

    value = TrainConfig.__dataclass_fields__[name].default
    return f"(default: {value}, or the --preset's value)"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, help=f"training epochs, warm-up included {_default('epochs')}")
    p.add_argument("--lr", type=float, help=f"base learning rate {_default('lr')}")
    p.add_argument("--batch-size", type=int, help=f"training batch size {_default('batch_size')}")
    p.add_argument("--optimizer", help=f"sgd, adamw, adam or adamw-hf {_default('optimizer')}")
    p.add_argument("--weight-decay", type=float, help=_default("weight_decay"))
    p.add_argument("--warmup-epochs", type=int,
                   help=f"warm-up epochs (constant at 1e-5, or linear with --scheduler linear-warmup-cosine) "
                        f"{_default('warmup_epochs')}")
    p.add_argument("--scheduler", choices=["cosine", "constant", "linear-warmup-cosine"],
                   help="after Dassl's constant warm-up: cosine or constant; linear-warmup-cosine = VPT's schedule "
                        f"{_default('scheduler')}")
    p.add_argument("--grad-clip", type=float, help=f"max gradient norm, 0 = none {_default('grad_clip')}")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto", "fp16-gpu"],
                   help=f"auto = bf16 where supported; fp16-gpu = fp16 on CUDA, fp32 elsewhere {_default('precision')}")
    p.add_argument("--feature-views", type=int,
                   help=f"cached augmented views per image, 0 = no cache {_default('feature_views')}")
    p.add_argument("--cache-dir",
                   help="image-feature cache (default: under $VLPROMPT_CACHE, $XDG_CACHE_HOME/vlprompt "
                        "or ~/.cache/vlprompt)")
    p.add_argument("--num-workers", type=int, help=f"data-loader workers {_default('num_workers')}")
    p.add_argument("--log-to", metavar="LOGGERS",
                   help="mirror metrics and results into tensorboard and/or wandb (comma-separated; "
                        "<out>/tensorboard/, <out>/wandb/ offline unless WANDB_MODE is set)")
    p.add_argument("--log-project", help="W&B project (default: $WANDB_PROJECT or vlprompt)")
    _add_quiet(p)


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (tqdm bars on a terminal, '[vlprompt] ...' lines on stderr otherwise)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlprompt", description="Prompt tuning of frozen vision-language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list registered methods; with a NAME, its options and presets")
    p.add_argument("name", nargs="?", help="a method (e.g. maple, coop+dept): print its -o options and presets")
    sub.add_parser("sweep", help="run a declared grid of runs, resumable (vlprompt sweep --help)")
    sub.add_parser("report", help="tables and plots from results.json files (vlprompt report --help)")
    sub.add_parser("pretrain-tiny", help="pretrain the embedded tiny-clip (vlprompt pretrain-tiny --help)")
    p = sub.add_parser("datasets", help="list datasets (with --root: which are present)")
    p.add_argument("--root", help="data root ($DATA): each dataset present / incomplete / missing, and why")
    p.add_argument("--check", action="store_true", help="with --root: open every listed image, list unreadable ones")
    _add_quiet(p)

    p = sub.add_parser("train", help="train a method on a dataset and write a run directory")
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", required=True, help="data root ($DATA) or the dataset folder")
    p.add_argument("--shots", type=int, help="K images per class (few-shot); default: all")
    p.add_argument("--subsample", default="all", choices=["all", "base", "new"])
    p.add_argument("--split-file", help="a stored few-shot split (split.json) to use instead of sampling")
    p.add_argument("--split", choices=["tune", "final"],
                   help="VTAB-1k / FGVC stage: tune = train800 -> val200, final = train800val200 -> test")
    p.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
    p.add_argument("--restart", action="store_true",
                   help="start over from epoch 0: move the run directory's checkpoint to checkpoint/discarded/")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE", help=_OPT_HELP)
    p.add_argument("--preset", help="paper configuration: paper, dept, ... (explicit options win)")
    p.add_argument("--seed", type=int, default=1, help="seed of the few-shot sample and of training (default: 1)")
    _add_backbone_args(p)
    _add_train_args(p)

    for cmd, help_ in (("base2new", "train on base classes, evaluate base and new (B/N/H)"),
                       ("few-shot", "all classes, several shot counts"),
                       ("cross-dataset", "train on a source dataset, evaluate on target datasets"),
                       ("domain-gen", "train on a source, evaluate on its shifted variants")):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("--method", required=True)
        if cmd in ("base2new", "few-shot"):
            p.add_argument("--datasets", nargs="+", required=True)
        else:
            p.add_argument("--source", required=True)
            p.add_argument("--targets", nargs="+", required=cmd == "cross-dataset")
        if cmd == "few-shot":
            p.add_argument("--shots-list", nargs="+", type=int, default=[1, 2, 4, 8, 16])
            p.add_argument("--repeats", type=int, help="linear-probe: CoOp lpclip's protocol, runs 1..N each "
                           "resampling the few-shot set (reference: 10); --seeds is then not used")
        else:
            p.add_argument("--shots", type=int, default=16)
        p.add_argument("--root", required=True)
        p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
        p.add_argument("--out", required=True)
        p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE", help=_OPT_HELP)
        p.add_argument("--preset", help="paper configuration: paper, dept, ... (explicit options win)")
        _add_backbone_args(p)
        _add_train_args(p)

    p = sub.add_parser("multitask", help="train jointly on a task group (SoftCPT), accuracy per task")
    p.add_argument("--method", required=True, help="e.g. softcpt-nata, softcpt-nats, softcpt-nata+dept")
    p.add_argument("--groups", nargs="+", required=True,
                   help="tiny-group/<name>, general10 / plant6 / fashion20 (SoftCPT's groups, data under --root), "
                        "a group .yaml, a split_dk_<Name>.json or comma-separated datasets")
    p.add_argument("--root", default="", help="data root of the groups' datasets (not needed for tiny-group/)")
    p.add_argument("--shots-list", nargs="+", type=int, default=[16])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--out", required=True)
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE", help=_OPT_HELP)
    p.add_argument("--preset", help="paper: SGD lr 0.002, 50 epochs, batch 32")
    p.add_argument("--base2new", action="store_true",
                   help="train on every task's base classes jointly, test each task's base and new classes (B/N/H)")
    p.add_argument("--baselines", nargs="*", default=[], choices=["zeroshot", "linear-probe"],
                   help="single-task baselines run per task of each group, added to the tables")
    _add_backbone_args(p)
    _add_train_args(p)

    p = sub.add_parser("vtab", help="VTAB-1k / FGVC: lr x wd grid on train800 -> val200, then seeds on "
                                    "train800val200 -> test; per-task, group and overall means")
    p.add_argument("--method", required=True)
    p.add_argument("--datasets", nargs="+", required=True, help="vtab/<task>, fgvc/<name> or tiny/vtab_* names")
    p.add_argument("--root", default=".", help="data root ($DATA) holding vtab-1k/ and the FGVC folders")
    p.add_argument("--out", required=True)
    p.add_argument("--lrs", nargs="+", type=float,
                   help="base lrs of the grid (default: VPT's grid for the method: 50 ... 0.05 for prompts and "
                        "linear, 0.001 0.0001 0.0005 0.005 for finetune)")
    p.add_argument("--wds", nargs="+", type=float, help="weight decays of the grid (default: 0.01 0.001 0.0001 0)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds of the final runs (default: 42 44 82 100 800)")
    p.add_argument("--tune-seed", type=int, help="seed of the grid runs (default: the first final seed)")
    p.add_argument("--no-lr-scale", action="store_true", help="use the base lr as is (VPT: lr x batch / 256)")
    p.add_argument("--no-tune", action="store_true", help="skip the grid: one --lrs and one --wds value")
    p.add_argument("--prune", action="store_true",
                   help="e2vpt: prune + rewind on the tuning split, then the final seeds with the pruned masks")
    p.add_argument("--token-levels", nargs="+", type=float, help="--prune token levels %% (default 10 ... 90)")
    p.add_argument("--piece-levels", nargs="+", type=float, help="--prune segment levels %% (default 10 ... 90)")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE", help=_OPT_HELP)
    p.add_argument("--preset")
    _add_backbone_args(p)
    _add_train_args(p)

    p = sub.add_parser("data-efficient", help="train on a selected fraction of the training set (accuracy vs ratio)")
    p.add_argument("--method", required=True)
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.2, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--selection", default="uniform", choices=["uniform", "herding", "kcenter"],
                   help="uniform sampling (reference default) or a coreset on image features")
    p.add_argument("--shots", type=int, help="few-shot sample to select from; default: the full training set")
    p.add_argument("--root", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--out", required=True)
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE", help=_OPT_HELP)
    p.add_argument("--preset")
    _add_backbone_args(p)
    _add_train_args(p)

    p = sub.add_parser("eval", help="evaluate a trained run, e.g. on the new classes (base → new)")
    p.add_argument("--run", required=True)
    p.add_argument("--subsample", choices=["all", "base", "new"], help="default: the run's")
    p.add_argument("--dataset", help="another dataset (cross-dataset transfer); default: the run's")
    p.add_argument("--root", help="data root of --dataset")
    p.add_argument("--weights", help="backbone weights (default: the run's, or its --pretrained tag)")
    _add_quick_gelu(p, "override the run's recorded activation:")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir")

    p = sub.add_parser("analyze", help="analyses of trained runs (channels: DePT's channel importance)")
    asub = p.add_subparsers(dest="analysis", required=True)
    p = asub.add_parser("channels", help="per-channel importance of base and new classes (DePT's channel bias)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of `vlprompt train` / protocols")
    p.add_argument("--out", required=True, help="folder for channels.csv, channels.md and channels.png")
    p.add_argument("--window", type=int, default=16, help="channels per window of the CI plot (default: 16, DePT)")
    p.add_argument("--ratio-window", type=int, default=32,
                   help="channels per window of the CI-base : CI-new ratio (default: 32, DePT; it uses 128 on EuroSAT)")
    p.add_argument("--root", help="data root (default: the one each run recorded)")
    p.add_argument("--weights", help="backbone weights (default: the run's, or its --pretrained tag)")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir")
    p.add_argument("--no-plot", action="store_true", help="write the tables only")

    p = sub.add_parser("predict", help="top-k classes for image files")
    p.add_argument("images", nargs="+")
    p.add_argument("--run", required=True, help="a trained run directory (prompt.safetensors + prompt.json)")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default: 5)")
    p.add_argument("--classnames", help="predict among these classes instead of the training ones: comma-"
                   "separated names, or a text file with one name per line (the prompt is re-targeted)")
    p.add_argument("--weights", help="backbone weights (default: the run's, or its --pretrained tag)")
    _add_quick_gelu(p, "override the run's recorded activation:")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("convert", help="convert a checkpoint to .safetensors once (records the activation)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--trust-checkpoint", action="store_true")
    _add_quick_gelu(p, "record that the weights need")

    p = sub.add_parser("backbones", help="list backbone architectures and their pretrained tags (--pretrained)")
    p.add_argument("pattern", nargs="?",
                   help="only names matching this shell pattern, e.g. 'ViT-B-*' or 'timm:vit_base*'")
    p.add_argument("--no-timm", action="store_true", help="open_clip architectures only")

    p = sub.add_parser("demo", help="the papers' story in one run: base-to-new with real pretrained weights "
                                    "(effnet-minilm) on the real suite for zero-shot, linear probe, CoOp, CoCoOp, "
                                    "KgCoOp and each +DePT, then MaPLe / VPT / E2VPT on tiny-clip; tables, reading "
                                    "lines, report + bar plots (falls back to tiny-clip without the real weights)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--backbone", default=None,
                   help="run one part on this backbone instead of the default plan (e.g. tiny-clip)")
    p.add_argument("--weights", default=None, help="backbone weights (default: the embedded ones)")
    p.add_argument("--pretrained", metavar="TAG", help="pretrained tag instead of --weights (see `vlprompt backbones`)")
    _add_quick_gelu(p)
    p.add_argument("--methods", default=None,
                   help="comma-separated methods: one part with these (default: the plan's; with --backbone: "
                        "zeroshot,linear-probe,coop,cocoop,kgcoop,maple)")
    p.add_argument("--tasks", default=None, help="comma-separated datasets, e.g. tiny/shapes or real/digits: one part "
                                                 "(default backbone tiny-clip for tiny/ tasks, else effnet-minilm)")
    p.add_argument("--seed", type=int, default=None, help="one seed for every part")
    p.add_argument("--seeds", default=None, help="comma-separated seeds for every part (default: real part 1,2,3; "
                                                 "tiny-clip parts 1)")
    p.add_argument("--epochs", type=int, default=None, help="override the 10 training epochs (quick checks)")
    p.add_argument("--suite", default=".", help="tiny suite folder (default: the cache, generated on first use)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes, one torch thread each (default 2)")
    for p in sub.choices.values():
        _show_defaults(p)
    return parser


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help of every option with a default that its help does not state yet
    (flags, required options and options without a default are left alone)."""
    for action in p._actions:
        default = action.default
        if (isinstance(action, argparse._HelpAction) or action.required or default is argparse.SUPPRESS
                or default in (None, False, "", []) or any(t in (action.help or "") for t in ("(default", "default:"))):
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        action.help = f"{action.help} (default: {shown})" if action.help else f"(default: {shown})"


# ---------------------------------------------------------------------- commands
def cmd_methods(args: argparse.Namespace) -> None:
    from .methods import get_method_class, list_methods

    if args.name:
        _describe_method(args.name)
        return
    from .methods.base import plugin_summary, plugin_targets

    for name in list_methods():
        if name.startswith("+"):
            targets = plugin_targets(name[1:])
            on = _ANY_TEXT_METHOD if targets is None else ", ".join(targets)
            print(f"{name:16s} {plugin_summary(name[1:])} (on: {on})")
            continue
        print(f"{name:16s} {(get_method_class(name).__doc__ or '').strip().splitlines()[0]}")


def _describe_method(name: str) -> None:
    """``vlprompt methods NAME``: the method's summary, every ``-o`` option and its presets."""
    import dataclasses
    import textwrap

    from .methods.base import _split_name, describe_type, get_method_class, method_options, option_docs
    from .presets import PRESETS, TRAINING_FREE

    if name.startswith("+"):
        _describe_plugin(name[1:])
        return
    base, _ = _split_name(name)
    cls = get_method_class(base)
    print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
    print("\noptions (-o KEY=VALUE; API: build_method(name, bb, classnames, KEY=VALUE)):")
    docs = option_docs(name)
    for key, (tp, default) in method_options(name).items():
        shown = "(required)" if default is dataclasses.MISSING else repr(default)
        print(f"  {key} = {shown}   [{describe_type(tp)}]")
        if docs.get(key):
            print(textwrap.fill(docs[key], width=100, initial_indent="      ", subsequent_indent="      "))
    presets = PRESETS.get(base, {})
    print("\npresets (--preset NAME; explicit options win):")
    if base in TRAINING_FREE:
        print("  any preset name: the defaults above (no training loop to configure)")
    for preset, table in presets.items():
        opts = {**table["method"], **table["train"]}
        print(f"  {preset}: " + (", ".join(f"{k}={v!r}" for k, v in opts.items()) or "the defaults"))
    if not presets and base not in TRAINING_FREE:
        print("  none")


#: what a plug-in without a declared scope takes (DePT): its wrap function checks the method when it is built
_ANY_TEXT_METHOD = "every method that trains prompts against class text (checked when built)"


def _describe_plugin(plugin: str) -> None:
    """``vlprompt methods +PLUGIN``: what it does, the methods it takes, its ``-o`` options and presets."""
    import dataclasses
    import textwrap

    from .methods.base import describe_type, plugin_options, plugin_summary, plugin_targets
    from .presets import PLUGIN_PRESETS

    targets = plugin_targets(plugin)
    print(f"+{plugin}: {plugin_summary(plugin)}")
    print(f"\nuse as <method>+{plugin} on: "
          + (_ANY_TEXT_METHOD if targets is None else ", ".join(targets)))
    print(f"\noptions (-o KEY=VALUE, with <method>+{plugin}; the method's own options too):")
    for key, (tp, default, doc) in plugin_options(plugin).items():
        shown = "(required)" if default is dataclasses.MISSING else repr(default)
        print(f"  {key} = {shown}   [{describe_type(tp)}]")
        if doc:
            print(textwrap.fill(doc, width=100, initial_indent="      ", subsequent_indent="      "))
    print("\npresets: the method's (vlprompt methods METHOD)" + ("; a preset adds:" if PLUGIN_PRESETS.get(plugin)
                                                                  else ""))
    for preset, opts in PLUGIN_PRESETS.get(plugin, {}).items():
        print(f"  {preset}: " + ", ".join(f"{k}={v!r}" for k, v in opts.items()))


def cmd_datasets(args: argparse.Namespace) -> int | None:
    from .data import list_datasets
    from .data.real import real_status

    real = real_status()  # real/<name> -> "available" | "missing: <install command>"
    if not args.root:
        for name in list_datasets():
            print(f"{name:26s} {real[name]}" if name in real else name)
        return None
    from .data.status import dataset_status, unreadable_images

    root = Path(args.root).expanduser()
    if not root.is_dir():
        print(f"error: data root {root} does not exist (or is not a folder); expected the folder that holds "
              "the datasets, e.g. ~/data with ~/data/dtd, ~/data/eurosat ...", file=sys.stderr)
        return 1
    failed = 0
    for name in list_datasets():
        st = dataset_status(name, root)
        print(f"{name:26s} {st.state:10s} {st.detail}", flush=True)
        if args.check and st.task is not None:
            def progress(i: int, n: int, name: str = name) -> None:
                if i == n or i % max(n // 10, 1) == 0:
                    print(f"  checking {name}: {i}/{n} images", file=sys.stderr, flush=True)

            bad = unreadable_images(st.task, progress)
            failed += len(bad)
            for path, why in bad:
                print(f"  unreadable: {path}: {why}")
    if args.check:
        print(f"{failed} unreadable image(s)" if failed else "every listed image opens")
    return 1 if failed else None


def _spec(args: argparse.Namespace, **overrides: Any):
    from .protocols import RunSpec

    fields = {
        "method": args.method, "dataset": getattr(args, "dataset", "") or "", "root": args.root, "out": args.out,
        "shots": getattr(args, "shots", None), "seed": getattr(args, "seed", 1),
        "subsample": getattr(args, "subsample", "all"),
        "backbone": args.backbone, "weights": args.weights, "trust_checkpoint": args.trust_checkpoint,
        "pretrained": args.pretrained, "quick_gelu": args.quick_gelu,
        "preset": args.preset, "method_options": _parse_options(args.opt, args.method),
        "train_options": _train_options(args),
        "split_file": getattr(args, "split_file", None), "device": args.device,
        "split": getattr(args, "split", None), "model_kwargs": _model_kwargs(getattr(args, "model_kwargs", None)),
    }
    fields.update(overrides)
    fields["train_options"].pop("seed", None)
    fields["train_options"].pop("device", None)
    return RunSpec(**fields)


def cmd_train(args: argparse.Namespace) -> None:
    from .protocols import train_run

    results = train_run(_spec(args), skip_done=False, restart=args.restart)
    print(json.dumps({k: v for k, v in results.items() if k != "env"}, indent=2))


def _run_setup(run: Path, args: argparse.Namespace):
    from .engine.run import RunDir
    from .protocols.runs import run_backbone

    cfg = RunDir(run).read_config()
    if not cfg:
        raise ConfigError(f"{run} is not a run directory (no config.yaml); train one with `vlprompt train`")
    return cfg, run_backbone(cfg, args.weights, args.trust_checkpoint, args.device, quick_gelu=args.quick_gelu)


def cmd_eval(args: argparse.Namespace) -> None:
    from .engine.loggers import log_results
    from .engine.run import RunDir, atomic_write
    from .engine.train import hm
    from .protocols import evaluate_run

    run = RunDir(args.run)
    cfg = run.read_config()
    if not cfg:
        raise ConfigError(f"{run.path} is not a run directory (no config.yaml); train one with `vlprompt train`")
    ds = cfg["dataset"]
    name, root = args.dataset or ds["name"], args.root or ds["root"]
    subsample = args.subsample or ds["subsample"]
    out = evaluate_run(run.path, name, root, subsample, cache_dir=args.cache_dir, weights=args.weights,
                       trust_checkpoint=args.trust_checkpoint, device=args.device, quick_gelu=args.quick_gelu)
    name_part = out["dataset"].replace("/", "_")
    atomic_write(run.path / f"eval_{name_part}_{subsample}.json", json.dumps(out, indent=2) + "\n")
    results = run.read_results()
    if results is not None and out["dataset"] == ds["name"] and ds["subsample"] == "base" and subsample == "new":
        results.update({"new_acc": out["acc"], "hm": hm(results["base_acc"], out["acc"])})
        run.write_results(results)
        log_results(run.path, {"epochs": results.get("epochs"), "new_acc": results["new_acc"], "hm": results["hm"]})
        out.update({"base_acc": results["base_acc"], "new_acc": out["acc"], "hm": results["hm"]})
    print(json.dumps(out, indent=2))


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis.channels import analyze_runs, summary_markdown

    results = analyze_runs(args.runs, args.out, args.window, args.ratio_window, root=args.root, device=args.device,
                           cache_dir=args.cache_dir, weights=args.weights, trust_checkpoint=args.trust_checkpoint,
                           plot=not args.no_plot)
    print(summary_markdown(results), end="")
    names = ["channels.csv", "channels.md"] + ([] if args.no_plot else ["channels.png"])
    print(f"wrote {', '.join(names)} to {args.out}")


def cmd_protocol(args: argparse.Namespace) -> None:
    from . import protocols

    seeds = args.seeds
    cache = getattr(args, "cache_dir", None)
    if args.command == "base2new":
        summary = protocols.base2new(_spec(args), args.datasets, seeds, cache_dir=cache)
    elif args.command == "few-shot":
        summary = protocols.few_shot(_spec(args), args.datasets, args.shots_list, seeds, repeats=args.repeats)
    elif args.command == "multitask":
        summary = protocols.multitask(_spec(args), args.groups, args.shots_list, seeds, base2new=args.base2new,
                                      baselines=args.baselines)
    elif args.command == "data-efficient":
        summary = protocols.data_efficient(_spec(args), args.datasets, args.ratios, seeds, args.selection)
    elif args.command == "cross-dataset":
        summary = protocols.cross_dataset(_spec(args, dataset=args.source), args.targets, seeds, cache_dir=cache)
    else:
        summary = protocols.domain_gen(_spec(args, dataset=args.source), args.targets, seeds, cache_dir=cache)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


def _prune_options(args: argparse.Namespace, options_cls: type) -> Any:
    """``PruneOptions`` from ``--prune`` / ``--token-levels`` / ``--piece-levels`` (``None`` without ``--prune``)."""
    if not args.prune:
        if args.token_levels or args.piece_levels:
            raise ConfigError("vtab: --token-levels / --piece-levels need --prune")
        return None
    levels = {k: tuple(v) for k, v in (("token_levels", args.token_levels), ("piece_levels", args.piece_levels)) if v}
    return options_cls(**levels)


def cmd_vtab(args: argparse.Namespace) -> None:
    from .protocols.vtab import VTAB_SEEDS, WDS, PruneOptions, vtab

    if args.lr is not None or args.weight_decay is not None:
        raise ConfigError("vtab: the learning rate and weight decay come from the grid; use --lrs and --wds "
                          "(with --no-tune for one fixed pair) instead of --lr / --weight-decay")
    summary = vtab(_spec(args, shots=None), args.datasets, lrs=args.lrs, wds=args.wds or WDS,
                   seeds=args.seeds or VTAB_SEEDS, scale_lr=not args.no_lr_scale, tune=not args.no_tune,
                   tune_seed=args.tune_seed, prune=_prune_options(args, PruneOptions))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "rows", "runs_pruned")}, indent=2))
    print(f"tables: {Path(args.out) / 'vtab.md'}")


def cmd_predict(args: argparse.Namespace) -> None:
    import vlprompt as vp

    _, bb = _run_setup(Path(args.run), args)
    model = vp.load_prompt(args.run, bb)
    if args.classnames:
        model.set_classnames(_read_classnames(args.classnames))
    for path, preds in zip(args.images, vp.predict(model, args.images, topk=args.topk, device=args.device),
                           strict=True):
        print(path + "\t" + "  ".join(f"{name} ({p:.3f})" for name, p in preds))


def _read_classnames(value: str) -> list[str]:
    """``--classnames``: a text file (one name per line) if one exists at ``value``, else comma-separated."""
    path = Path(value).expanduser()
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--classnames: cannot read {path}: {exc}") from exc
    else:
        names = [n.strip() for n in value.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"--classnames {value!r} gives no class names; expected 'cat,dog' or a file of names")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--classnames lists {dup} more than once; each class once")
    return names


def cmd_convert(args: argparse.Namespace) -> None:
    from .backbones import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, trust_checkpoint=args.trust_checkpoint, quick_gelu=args.quick_gelu)
    print(f"wrote {out}")


def cmd_backbones(args: argparse.Namespace) -> None:
    """``vlprompt backbones``: every architecture with its pretrained tags (open_clip's table, timm's)."""
    import fnmatch

    from open_clip.pretrained import get_pretrained_cfg

    from .backbones import list_backbones

    table = list_backbones(include_timm=not args.no_timm)
    names = [n for n in table if not args.pattern or fnmatch.fnmatchcase(n, args.pattern)]
    if not names:
        raise ConfigError(f"no backbone matches {args.pattern!r}; try `vlprompt backbones` without a pattern")
    width = max(len(n) for n in names)
    for name in names:
        tags = [t + ("*" if not name.startswith("timm:") and get_pretrained_cfg(name, t).get("quick_gelu") else "")
                for t in table[name]]
        print(f"{name:{width}s}  {', '.join(tags) or '-'}")
    print("\n--backbone NAME --pretrained TAG: fetched by open_clip / timm into the Hugging Face cache (offline once "
          "cached); or --weights FILE.\n* trained with QuickGELU: --pretrained TAG builds it so; with --weights use "
          "NAME-quickgelu or --quick-gelu")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    elif args.seed is not None:
        seeds = [args.seed]
    res = run_demo(args.out, backbone=args.backbone, weights=args.weights, methods=methods, tasks=tasks, seeds=seeds,
                   epochs=args.epochs, root=args.suite, workers=args.workers, pretrained=args.pretrained,
                   quick_gelu=args.quick_gelu)
    print("\n" + res["table"])
    print(f"\nreport: {Path(args.out) / 'demo.md'}; run directories under {args.out}/")


COMMANDS = {
    "methods": cmd_methods, "datasets": cmd_datasets, "train": cmd_train, "eval": cmd_eval,
    "predict": cmd_predict, "convert": cmd_convert, "demo": cmd_demo, "base2new": cmd_protocol,
    "few-shot": cmd_protocol, "multitask": cmd_protocol, "cross-dataset": cmd_protocol, "domain-gen": cmd_protocol,
    "vtab": cmd_vtab, "data-efficient": cmd_protocol, "backbones": cmd_backbones, "analyze": cmd_analyze,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # the sweep and report commands own their argument parsers
        from .sweep import sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["report"]:
        from .report import report_main

        return report_main(argv[1:])
    if argv[:1] == ["pretrain-tiny"]:
        from .pretrain import pretrain_main

        return pretrain_main(argv[1:])
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(), quiet_if(getattr(args, "quiet", False)):
        warnings.showwarning = _show_warning
        try:
            rc = COMMANDS[args.command](args)
        except VlpromptError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return rc if isinstance(rc, int) else 0


_SHOW_WARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """vlprompt's own warnings as one ``warning: <message>`` line on stderr; others as Python shows them."""
    if issubclass(category, VlpromptWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


if __name__ == "__main__":
    sys.exit(main())
