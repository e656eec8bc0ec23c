"""Sweep files: a declared grid (YAML) expanded into runs with deterministic, readable ids.

Schema (see ``docs/sweeps.md``)::

    methods: [zeroshot, coop, {name: coop+dept, options: {n_ctx: 4}}]
    datasets: [eurosat, dtd, {name: imagefolder, root: /data/shapes, label: shapes}, imagefolder@/data/x]
    protocol: base2new            # base2new | few-shot | all | multitask | multitask-base2new | vtab |
                                  # cross-dataset | domain-gen
    targets: [caltech101, dtd]    # cross-dataset / domain-gen only: evaluated with the source's prompts
    shots: [16]
    seeds: [1, 2, 3]              # vtab: the final seeds of one run (default VPT's 42 44 82 100 800)
    lrs: [10, 1, 0.1]             # vtab only: the base-lr × wd grid (default VPT's)
    wds: [0.001, 0.0]
    prune: {token_levels: [50], piece_levels: [50]}   # vtab only: E2VPT's pruning stage for e2vpt runs
    presets: [dept]               # optional; null/omitted = no preset
    overrides: {train: {epochs: 1}, method: {}}   # or a list of such dicts (one variant each)
    backbone: tiny-clip           # any --backbone name, e.g. ViT-B-16 or ViT-B-16-quickgelu
    weights: null
    pretrained: null              # a pretrained tag instead of weights, e.g. openai (vlprompt backbones)
    quick_gelu: null              # true / false forces the CLIP activation (--quick-gelu / --no-quick-gelu)
    data_root: ~/data
    out: runs/my_sweep

Run id: ``<protocol>/<method>/<dataset>/shots<K>/seed<S>[-<preset>][-<hash of options>]``
(``vtab``: ``vtab/<method>/<dataset>/seeds<S1+S2+...>[-<preset>][-<hash>]``, one run = the grid and the
final seeds of one task); the run directory is ``<out>/<id>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine.loggers import LOGGING_OPTIONS
from ..errors import ConfigError
from ..methods.base import describe_type, value_fits

PROTOCOLS = ("base2new", "few-shot", "multitask", "multitask-base2new", "vtab", "cross-dataset", "domain-gen")
#: protocols whose datasets are task groups
GROUP_PROTOCOLS = ("multitask", "multitask-base2new")
#: protocols that train on a source dataset (all classes) and evaluate on ``targets``
TRANSFER_PROTOCOLS = ("cross-dataset", "domain-gen")
#: ``domain-gen`` targets when an ``imagenet`` source has none (``vlprompt.protocols.transfer.IMAGENET_SHIFTS``)
_IMAGENET_SHIFTS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
#: what ``protocol: all`` expands to
ALL_PROTOCOLS = ("base2new", "few-shot")
_KEYS = {"methods", "datasets", "protocol", "shots", "seeds", "presets", "overrides", "backbone", "weights",
         "trust_checkpoint", "data_root", "out", "device", "cache_dir", "name", "lrs", "wds", "scale_lr",
         "prune", "targets", "pretrained", "quick_gelu"}
_VTAB_KEYS = ("lrs", "wds", "scale_lr", "prune")
_PRUNE_KEYS = ("token_levels", "piece_levels", "min_tokens", "min_pieces")
#: VPT's / E2VPT's seeds of the final runs (``vlprompt.protocols.vtab.VTAB_SEEDS``; not imported: no torch here)
_VTAB_SEEDS = (42, 44, 82, 100, 800)
_GROUP_FILES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of the sweep: registry ``name``, its ``root`` (None: the sweep's ``data_root``), id ``label``."""

    name: str
    root: str | None = None
    label: str = ""


@dataclass(frozen=True)
class MethodEntry:
    """A method of the sweep with its own method options (e.g. ``n_ctx`` for CoOp only)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepRun:
    """One expanded run: everything a worker needs (plain data, picklable)."""

    id: str
    out: str
    protocol: str
    method: str
    dataset: str
    dataset_label: str
    root: str
    shots: int | None
    seed: int
    preset: str | None
    method_options: dict[str, Any]
    train_options: dict[str, Any]
    backbone: str
    weights: str | None
    trust_checkpoint: bool = False
    device: str = "auto"
    cache_dir: str | None = None
    seeds: tuple[int, ...] = ()
    lrs: tuple[float, ...] | None = None
    wds: tuple[float, ...] | None = None
    scale_lr: bool = True
    #: cross-dataset / domain-gen: ``(name, root, label)`` of each target, evaluated after training
    targets: tuple[tuple[str, str, str], ...] = ()
    prune: dict[str, Any] | None = None
    pretrained: str | None = None
    quick_gelu: bool | None = None


@dataclass
class Sweep:
    """A parsed sweep file. ``expand()`` gives the runs in a fixed order."""

    methods: list[MethodEntry]
    datasets: list[DatasetEntry]
    protocols: list[str]
    shots: list[int | None]
    seeds: list[int]
    presets: list[str | None]
    overrides: list[dict[str, dict[str, Any]]]
    backbone: str = "tiny-clip"
    weights: str | None = None
    trust_checkpoint: bool = False
    data_root: str | None = None
    out: str = "runs/sweep"
    device: str = "auto"
    cache_dir: str | None = None
    name: str = "sweep"
    lrs: list[float] | None = None
    wds: list[float] | None = None
    scale_lr: bool = True
    prune: dict[str, Any] | None = None
    targets: list[DatasetEntry] = field(default_factory=list)
    pretrained: str | None = None
    quick_gelu: bool | None = None

    def _targets(self, protocol: str, source: DatasetEntry) -> tuple[tuple[str, str, str], ...]:
        if protocol not in TRANSFER_PROTOCOLS:
            return ()
        entries = self.targets
        if not entries and protocol == "domain-gen" and source.name == "imagenet":
            entries = [DatasetEntry(n, None, n) for n in _IMAGENET_SHIFTS]
        if not entries:
            raise ConfigError(f"sweep: protocol {protocol} needs 'targets' (the datasets evaluated with the prompts "
                              f"trained on {source.label!r}); only an imagenet source defaults to "
                              f"{', '.join(_IMAGENET_SHIFTS)}")
        out = []
        for t in entries:
            root = t.root if t.root is not None else self.data_root
            if root is None:
                if not root_free(t.name):
                    raise ConfigError(f"target {t.label!r} has no root; set data_root or targets[].root "
                                      "(only tiny/ and real/ suite tasks need none)")
                root = ""
            out.append((t.name, str(root), t.label))
        return tuple(out)

    def validate(self) -> None:
        """Check the whole grid against the registries before anything runs (see :func:`validate_sweep`)."""
        validate_sweep(self)

    def expand(self) -> list[SweepRun]:
        """All runs of the grid: protocol × method × dataset × shots × seed × preset × override variant,
        less repeats of one configuration (:func:`config_fingerprint`: a zero-shot run stands for every shot
        count; it keeps the first one's id).

        ``vtab`` runs have no shots and no seed axis: one run per method × dataset × preset × variant
        trains the lr × wd grid and every seed of ``seeds``.
        """
        runs: list[SweepRun] = []
        for protocol in self.protocols:
            vtab = protocol == "vtab"
            for m in self.methods:
                for ds in self.datasets:
                    root = ds.root if ds.root is not None else self.data_root
                    if root is None:
                        if not root_free(ds.name):
                            raise ConfigError(f"dataset {ds.label!r} has no root; set data_root or "
                                              "datasets[].root (only tiny/ and real/ suite tasks need none)")
                        root = ""  # read from the vlprompt cache (as the CLI's --root "")
                    dataset = ds.name
                    if protocol in GROUP_PROTOCOLS and dataset.endswith(_GROUP_FILES):  # a group file under the root
                        dataset = os.path.expanduser(dataset)
                        if not os.path.isabs(dataset):
                            dataset = os.path.join(os.path.expanduser(str(root)), dataset)
                    for k in [None] if vtab else self.shots:
                        for seed in [self.seeds[0]] if vtab else self.seeds:
                            for preset in self.presets:
                                for ov in self.overrides:
                                    method_opts = {**ov.get("method", {}), **m.options}
                                    train_opts = dict(ov.get("train", {}))
                                    if self.cache_dir and "cache_dir" not in train_opts:
                                        train_opts["cache_dir"] = self.cache_dir
                                    hashed = {k2: v for k2, v in train_opts.items()
                                              if k2 != "cache_dir" and k2 not in LOGGING_OPTIONS}
                                    prune = self.prune if vtab and m.name.split("+")[0] == "e2vpt" else None
                                    if vtab:
                                        grid = {"lrs": self.lrs, "wds": self.wds,
                                                "scale_lr": None if self.scale_lr else False, "prune": prune}
                                        rid = vtab_run_id(m.name, ds.label, self.seeds, preset, method_opts,
                                                          hashed, {k2: v for k2, v in grid.items() if v is not None})
                                    else:
                                        rid = run_id(protocol, m.name, ds.label, k, seed, preset, method_opts, hashed)
                                    runs.append(SweepRun(
                                        id=rid, out=str(Path(self.out) / rid), protocol=protocol, method=m.name,
                                        dataset=dataset, dataset_label=ds.label, root=str(root), shots=k,
                                        seed=seed, preset=preset, method_options=method_opts,
                                        train_options=train_opts, backbone=self.backbone, weights=self.weights,
                                        trust_checkpoint=self.trust_checkpoint, device=self.device,
                                        cache_dir=self.cache_dir, seeds=tuple(self.seeds) if vtab else (),
                                        lrs=tuple(self.lrs) if vtab and self.lrs else None,
                                        wds=tuple(self.wds) if vtab and self.wds else None, scale_lr=self.scale_lr,
                                        targets=self._targets(protocol, ds), prune=prune,
                                        pretrained=self.pretrained, quick_gelu=self.quick_gelu,
                                    ))
        seen: set[str] = set()
        unique = []
        for r in runs:  # zero-shot once, not once per shot count: it reads no training images
            fp = config_fingerprint(r)
            if fp not in seen:
                seen.add(fp)
                unique.append(r)
        runs = unique
        ids = [r.id for r in runs]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"sweep expands to duplicate run ids {dup[:3]}; give the datasets distinct labels")
        return runs


def config_fingerprint(run: SweepRun) -> str:
    """A hash of everything that determines a run's results: all its fields but the id, the folder, the
    feature-cache folder and the logging options, and, for a method that reads no training images
    (zero-shot, :func:`vlprompt.methods.base.reads_training_data`), not the shot count either.
    :meth:`Sweep.expand` keeps the first run of each fingerprint, so zero-shot runs once per dataset and seed
    whatever the ``shots`` list.

    Example:
        >>> run = parse_sweep({"methods": ["zeroshot"], "datasets": ["tiny/shapes"], "shots": [1]}).expand()[0]
        >>> config_fingerprint(run) == config_fingerprint(dataclasses.replace(run, shots=16, id="x", out="y"))
        True
    """
    from ..methods import reads_training_data  # registers the methods (imports torch)

    d = dataclasses.asdict(run)
    for key in ("id", "out", "cache_dir"):
        d.pop(key)
    d["train_options"] = {k: v for k, v in run.train_options.items() if k != "cache_dir" and k not in LOGGING_OPTIONS}
    if not reads_training_data(run.method):
        d["shots"] = None
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def options_hash(method_options: dict[str, Any], train_options: dict[str, Any]) -> str:
    """A short stable hash of the explicit options ('' when there are none)."""
    if not method_options and not train_options:
        return ""
    blob = json.dumps({"method": method_options, "train": train_options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


#: bytes of one path component (most file systems allow 255)
_MAX_COMPONENT_BYTES = 255


def _kept(ch: str) -> bool:
    if ch.isascii():
        return ch.isalnum() or ch in "_.+=-"
    return unicodedata.category(ch)[0] in "LNM"  # letters, digits / numbers, combining marks


def _safe(s: str) -> str:
    """One safe path component of a run id: letters and digits of any script (NFC-normalised, with their
    combining marks) and ``_ . + = -``; every other run of characters becomes ``_``.

    ASCII names come out as before (ids of existing sweeps are unchanged); a name of dots only (``.``,
    ``..``) becomes ``_``, so no component leaves its folder; one over 255 bytes is cut and suffixed with
    a hash of the whole name. Cleaning a cleaned name changes nothing.

    Example:
        >>> _safe("формы ü 空 x"), _safe(".."), _safe("a/b c")
        ('формы_ü_空_x', '_', 'a_b_c')
    """
    marked = "".join(ch if _kept(ch) else "\0" for ch in unicodedata.normalize("NFC", str(s)))
    name = re.sub("\0+", "_", marked).strip("_") or "_"
    if set(name) == {"."}:
        name = "_"
    if len(name.encode()) > _MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        cut = name.encode()[:_MAX_COMPONENT_BYTES - 9].decode(errors="ignore")
        name = f"{cut}-{digest}"
    return name


def run_id(protocol: str, method: str, dataset: str, shots: int | None, seed: int, preset: str | None = None,
           method_options: dict[str, Any] | None = None, train_options: dict[str, Any] | None = None) -> str:
    """``<protocol>/<method>/<dataset>/shots<K>/seed<S>[-<preset>][-<hash>]``.

    Example:
        >>> run_id("few-shot", "coop", "eurosat", 16, 1, "dept")
        'few-shot/coop/eurosat/shots16/seed1-dept'
    """
    last = f"seed{seed}"
    if preset:
        last += f"-{_safe(preset)}"
    h = options_hash(method_options or {}, train_options or {})
    if h:
        last += f"-{h}"
    k = "all" if shots is None else str(shots)
    return "/".join([_safe(protocol), _safe(method), _safe(dataset), f"shots{k}", last])


def vtab_run_id(method: str, dataset: str, seeds: list[int] | tuple[int, ...], preset: str | None = None,
                method_options: dict[str, Any] | None = None, train_options: dict[str, Any] | None = None,
                grid: dict[str, Any] | None = None) -> str:
    """``vtab/<method>/<dataset>/seeds<S1+S2+...>[-<preset>][-<hash>]``; explicit grid keys join the hash.

    Example:
        >>> vtab_run_id("vpt-deep", "vtab_cifar", [42, 44])
        'vtab/vpt-deep/vtab_cifar/seeds42+44'
    """
    last = "seeds" + "+".join(str(s) for s in seeds)
    if preset:
        last += f"-{_safe(preset)}"
    train = dict(train_options or {})
    if grid:
        train["vtab_grid"] = grid
    h = options_hash(method_options or {}, train)
    if h:
        last += f"-{h}"
    return "/".join(["vtab", _safe(method), _safe(dataset), last])


def group_label(name: str) -> str:
    """The default label of a dataset name: a group file → its stem, ``"a,b"`` → ``a+b``, else the name.

    Example:
        >>> group_label("plant6/split_dk_Plant6.json"), group_label("tiny-group/real")
        ('split_dk_Plant6', 'tiny-group_real')
    """
    s = str(name)
    if s.endswith(_GROUP_FILES):
        s = Path(s).stem
    return _safe(s.replace(",", "+"))


def _as_list(v: Any, default: list[Any]) -> list[Any]:
    if v is None:
        return list(default)
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _parse_dataset(d: Any) -> DatasetEntry:
    if isinstance(d, str):
        name, _, root = d.partition("@")
        root = root or None
        label = name if root is None else f"{name}-{Path(root).name}" if name in ("imagefolder", "csv") else name
        return DatasetEntry(name.strip(), os.path.expanduser(root) if root else None, group_label(label.strip()))
    if isinstance(d, dict) and "name" in d:
        unknown = set(d) - {"name", "root", "label"}
        if unknown:
            raise ConfigError(f"datasets entry {d!r}: unknown keys {sorted(unknown)} (expected name, root, label)")
        root = d.get("root")
        default = d["name"] if root is None or d["name"] not in ("imagefolder", "csv") else \
            f"{d['name']}-{Path(str(root)).name}"
        return DatasetEntry(str(d["name"]), os.path.expanduser(str(root)) if root else None,
                            _safe(str(d["label"])) if d.get("label") else group_label(str(default)))
    raise ConfigError(f"datasets entry {d!r}: expected a name, 'name@root' or {{name, root, label}}")


def _parse_method(m: Any) -> MethodEntry:
    if isinstance(m, str):
        return MethodEntry(m.strip())
    if isinstance(m, dict) and "name" in m:
        unknown = set(m) - {"name", "options"}
        if unknown:
            raise ConfigError(f"methods entry {m!r}: unknown keys {sorted(unknown)} (expected name, options)")
        options = m.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"methods entry {m!r}: 'options' must be a mapping of method options "
                              f"(e.g. {{n_ctx: 4}}), got {_kind(options)}")
        return MethodEntry(str(m["name"]), dict(options))
    raise ConfigError(f"methods entry {m!r}: expected a name or {{name, options}}")


def _parse_override(o: Any) -> dict[str, dict[str, Any]]:
    if o is None:
        return {}
    if not isinstance(o, dict) or set(o) - {"method", "train"}:
        raise ConfigError(f"overrides entry {o!r}: expected {{method: {{...}}, train: {{...}}}}")
    for k, v in o.items():
        if v is not None and not isinstance(v, dict):
            raise ConfigError(f"overrides entry {o!r}: '{k}' must be a mapping of options, got {_kind(v)}")
    return {k: dict(v or {}) for k, v in o.items()}


# ----------------------------------------------------------------------------- typed values of the file
def _kind(v: Any) -> str:
    """What a YAML value is, in words (``true`` is a boolean, not a number, although bool ⊂ int in Python)."""
    if isinstance(v, bool):
        return f"{v!r} (a boolean)"
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping",
             type(None): "null"}
    return f"{v!r} ({names.get(type(v), type(v).__name__)})"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(data: dict[str, Any], key: str, default: list[Any], positive: bool = False,
              allow_all: bool = False) -> list[Any]:
    """``key`` as a list of integers (a scalar is a one-item list); ``allow_all``: ``all`` / null = None."""
    value = data.get(key)
    items = _as_list(value, default)
    expected = ("a positive integer" if positive else "an integer") + (", 'all'" if allow_all else "")
    out: list[Any] = []
    for v in items:
        if allow_all and v in (None, "all"):
            out.append(None)
        elif _is_int(v) and (not positive or v >= 1):
            out.append(v)
        else:
            where = f" in {value!r}" if isinstance(value, (list, tuple)) else ""
            raise ConfigError(f"sweep: '{key}' must be {expected} or a list of them; got {_kind(v)}{where}")
    return out


def _number(key: str, v: Any, whole: Any, minimum: float | None = None) -> float:
    """A number of the file; a numeric string is accepted (PyYAML reads ``1e-3`` as a string)."""
    x: float | None = None
    if (isinstance(v, (int, float)) and not isinstance(v, bool)) or isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            x = None
    if x is None or not math.isfinite(x) or (minimum is not None and x < minimum):
        where = f" in {whole!r}" if isinstance(whole, (list, tuple)) else ""
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ConfigError(f"sweep: '{key}' must be a number{bound} or a list of them; got {_kind(v)}{where}")
    return x


def _number_list(key: str, value: Any, minimum: float | None = None) -> list[float]:
    return [_number(key, v, value, minimum) for v in _as_list(value, [])]


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    v = data.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"sweep: '{key}' must be true or false; got {_kind(v)}")
    return v


# ----------------------------------------------------------------------------- option values by field type
def option_errors(config_cls: type, options: dict[str, Any], where: str) -> list[str]:
    """Problems of ``options`` for the config dataclass ``config_cls``: unknown names, values whose type
    does not fit the field (:func:`vlprompt.methods.base.value_fits`, the check ``build_method`` makes).
    Empty when all are valid.

    Example:
        >>> from vlprompt.methods.coop import CoOpConfig
        >>> option_errors(CoOpConfig, {"n_ctx": "four"}, "coop")
        ["coop: option n_ctx = 'four' (a string); expected int"]
    """
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    out = []
    for key, value in options.items():
        if key not in hints or key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"{where}: unknown option {key!r}{hint}; valid options: {', '.join(sorted(names))}")
        elif not value_fits(value, hints[key]):
            out.append(f"{where}: option {key} = {_kind(value)}; expected {describe_type(hints[key])}")
    return out


# ----------------------------------------------------------------------------- the grid vs the registries
def root_free(name: str) -> bool:
    """Whether dataset ``name`` is read from the vlprompt cache whatever its root: ``tiny/`` and ``real/``
    suite tasks, ``tiny-group/`` groups and comma-separated groups of those.

    Example:
        >>> root_free("tiny/shapes"), root_free("tiny-group/synthetic"), root_free("eurosat")
        (True, True, False)
    """
    from ..data import canonical_name
    from ..data.multitask import TINY_GROUP_PREFIX

    s = str(name).strip()
    if s.startswith(TINY_GROUP_PREFIX):
        return True
    if "," in s:
        members = [m.strip() for m in s.split(",") if m.strip()]
        return bool(members) and all(root_free(m) for m in members)
    try:
        return canonical_name(s).startswith(("tiny/", "real/"))
    except ConfigError:
        return False


def _dataset_problem(name: str, group: bool) -> str | None:
    """Why ``name`` is not a dataset (or, under the multitask protocols, a task group); None when it is."""
    from ..data import canonical_name, list_datasets
    from ..data.multitask import TINY_GROUP_PREFIX
    from ..data.tiny.suite import SPECS

    s = str(name).strip()
    if group and s.startswith(TINY_GROUP_PREFIX):
        groups = sorted({spec.group for spec in SPECS if spec.group})
        g = s[len(TINY_GROUP_PREFIX):]
        return None if g in groups else (f"{s!r}: the tiny suite has no task group {g!r}; expected one of "
                                         + ", ".join(TINY_GROUP_PREFIX + x for x in groups))
    if group and "," in s:
        bad = [p for m in s.split(",") if m.strip() for p in [_dataset_problem(m.strip(), False)] if p]
        return "; ".join(bad) or None
    if group:
        return None  # SoftCPT's named groups, group files: read under the root when the run starts
    try:
        canonical_name(s)
        return None
    except ConfigError:
        close = difflib.get_close_matches(s, list_datasets(), n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return f"{s!r}: unknown dataset{hint}; `vlprompt datasets` lists the registered names"


def validate_sweep(sweep: Sweep) -> None:
    """Check every entry of the grid before anything runs or is written: method names (plug-in
    combinations such as ``coop+dept`` included), each method's options against its ``Config`` fields
    and their types (``methods[].options`` and ``overrides.method``), training options against
    ``TrainConfig``, presets, dataset and target names against the dataset registry (task groups under
    the multitask protocols), and that every dataset has a root (``tiny/`` / ``real/`` need none).

    Raises:
        ConfigError: one message listing every offending entry.

    Example:
        >>> load_sweep("sweep.yaml").validate()
    """
    from ..engine.config import TrainConfig
    from ..engine.loggers import normalize_log_to
    from ..methods.base import get_method_class, list_methods, plugin_config
    from ..presets import resolve_preset

    problems: list[str] = []

    def add(problem: str) -> None:
        if problem not in problems:
            problems.append(problem)

    names = list_methods()
    methods = [n for n in names if not n.startswith("+")]
    plugins = [n[1:] for n in names if n.startswith("+")]
    for m in sweep.methods:
        base, *plugs = m.name.split("+")
        try:
            cls = get_method_class(base)
        except ConfigError:
            close = difflib.get_close_matches(base, methods, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            add(f"methods: {m.name!r}: unknown method {base!r}{hint}; expected one of {', '.join(methods)}")
            continue
        unknown = [p for p in plugs if p not in plugins]
        if unknown:
            add(f"methods: {m.name!r}: unknown plug-in(s) {unknown}; expected <method>"
                + "".join(f"[+{p}]" for p in plugins))
            continue
        configs = [(base, cls.Config)] + [(p, plugin_config(p)) for p in plugs]
        for ov in sweep.overrides:
            for where, opts in ((f"methods: {m.name} options", m.options),
                                (f"overrides.method (for {m.name})",
                                 {k: v for k, v in ov.get("method", {}).items() if k not in m.options})):
                own = {p: {k: v for k, v in opts.items() if k.startswith(f"{p}_")} for p in plugs}
                taken = {k for o in own.values() for k in o}
                split = {base: {k: v for k, v in opts.items() if k not in taken}, **own}
                for name, config in configs:
                    if config is not None and split[name]:
                        for problem in option_errors(config, split[name], where):
                            add(problem)
        for preset in sweep.presets:
            try:
                resolve_preset(m.name, preset)
            except ConfigError as e:
                add(f"presets: {e}")
    for ov in sweep.overrides:
        train = {k: v for k, v in ov.get("train", {}).items() if k != "log_to"}
        for problem in option_errors(TrainConfig, train, "overrides.train"):
            add(problem)
        if "log_to" in ov.get("train", {}):
            try:
                normalize_log_to(ov["train"]["log_to"])
            except ConfigError as e:
                add(f"overrides.train: {e}")
    group = bool(set(sweep.protocols) & set(GROUP_PROTOCOLS))
    for key, entries, is_group in (("datasets", sweep.datasets, group), ("targets", sweep.targets, False)):
        for d in entries:
            problem = _dataset_problem(d.name, is_group)
            if problem:
                add(f"{key}: {problem}")
            elif d.root is None and sweep.data_root is None and not root_free(d.name):
                add(f"{key}: {d.label!r} has no root; set data_root or {key}[].root "
                    "(only tiny/ and real/ suite tasks need none)")
    if problems:
        raise ConfigError(f"sweep {sweep.name!r}: {len(problems)} invalid "
                          f"{'entry' if len(problems) == 1 else 'entries'} (nothing was run):\n  "
                          + "\n  ".join(problems))


def parse_sweep(data: dict[str, Any], base_dir: str | Path | None = None) -> Sweep:
    """Validate a sweep mapping (the YAML content) into a :class:`Sweep`.

    Relative ``out`` and roots are resolved against ``base_dir`` (the sweep file's folder) when given.
    """
    if not isinstance(data, dict):
        raise ConfigError("a sweep file must be a mapping with at least 'methods' and 'datasets'")
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"sweep: unknown keys {sorted(unknown)}; expected some of {sorted(_KEYS)}")
    for key in ("methods", "datasets"):
        if not data.get(key):
            raise ConfigError(f"sweep: '{key}' is required and must not be empty")
    protocol = data.get("protocol", "few-shot")
    protocols = list(ALL_PROTOCOLS) if protocol == "all" else _as_list(protocol, ["few-shot"])
    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"sweep: protocol {p!r}; expected one of {', '.join(PROTOCOLS)} or all")
    vtab = "vtab" in protocols
    if vtab and len(protocols) > 1:
        raise ConfigError("sweep: protocol vtab cannot share a sweep file with other protocols (its seeds are the "
                          "final seeds of one run); use one file per protocol")
    given = [k for k in _VTAB_KEYS if k in data]
    if given and not vtab:
        raise ConfigError(f"sweep: {given} apply to protocol vtab only")
    if vtab and data.get("shots") not in (None, "all", [None], ["all"]):
        raise ConfigError("sweep: protocol vtab uses the full train800 / val200 splits; remove 'shots'")
    shots = _int_list(data, "shots", [16], positive=True, allow_all=True)
    seeds = _int_list(data, "seeds", list(_VTAB_SEEDS) if vtab else [1])
    if not seeds:
        raise ConfigError("sweep: 'seeds' must not be empty")
    lrs = _number_list("lrs", data["lrs"], 0.0) if data.get("lrs") is not None else None
    wds = _number_list("wds", data["wds"], 0.0) if data.get("wds") is not None else None
    if lrs == [] or wds == []:
        raise ConfigError("sweep: 'lrs' / 'wds' must not be empty (omit them for VPT's grid)")
    prune = _parse_prune(data.get("prune"))
    presets = [None if p in (None, "none", "") else str(p) for p in _as_list(data.get("presets"), [None])]
    overrides = [_parse_override(o) for o in _as_list(data.get("overrides"), [{}])]

    def resolve(p: str | None) -> str | None:
        if p is None:
            return None
        p = os.path.expanduser(str(p))
        return str(Path(base_dir) / p) if base_dir is not None and not os.path.isabs(p) else p

    datasets = [_parse_dataset(d) for d in _as_list(data["datasets"], [])]
    datasets = [DatasetEntry(d.name, resolve(d.root), d.label) for d in datasets]
    if data.get("targets") is not None and not set(protocols) & set(TRANSFER_PROTOCOLS):
        raise ConfigError(f"sweep: 'targets' apply to protocols {' / '.join(TRANSFER_PROTOCOLS)} only")
    targets = [_parse_dataset(d) for d in _as_list(data.get("targets"), [])]
    targets = [DatasetEntry(d.name, resolve(d.root), d.label) for d in targets]
    dup = sorted({t.label for t in targets if [u.label for u in targets].count(t.label) > 1})
    if dup:
        raise ConfigError(f"sweep: targets {dup} appear twice; give them distinct labels")
    if set(GROUP_PROTOCOLS) & set(protocols):
        from ..data.multitask import is_group_spec

        single = [d.name for d in datasets if not is_group_spec(d.name)]
        if single:
            raise ConfigError(f"sweep: protocol multitask trains on task groups; {single} are single datasets "
                              "(expected tiny-group/<name>, general10 / plant6 / fashion20, a group .yaml, "
                              "a split_dk_<Name>.json or 'a,b,c')")
    return Sweep(
        methods=[_parse_method(m) for m in _as_list(data["methods"], [])], datasets=datasets,
        protocols=protocols, shots=shots, seeds=seeds, presets=presets, overrides=overrides,
        backbone=str(data.get("backbone") or "tiny-clip"), weights=resolve(data.get("weights")),
        trust_checkpoint=_bool(data, "trust_checkpoint", False), data_root=resolve(data.get("data_root")),
        out=resolve(data.get("out")) or "runs/sweep", device=str(data.get("device") or "auto"),
        cache_dir=resolve(data.get("cache_dir")), name=str(data.get("name") or "sweep"),
        lrs=lrs, wds=wds, scale_lr=_bool(data, "scale_lr", True), prune=prune, targets=targets,
        pretrained=_backbone_source(data),
        quick_gelu=None if data.get("quick_gelu") is None else _bool(data, "quick_gelu", False),
    )


def _backbone_source(data: dict[str, Any]) -> str | None:
    """The sweep's ``pretrained`` tag (a string), checked against ``weights`` (one or the other)."""
    tag = data.get("pretrained")
    if tag is None:
        return None
    if not isinstance(tag, str) or not tag:
        raise ConfigError(f"sweep: 'pretrained' must be a tag such as openai; got {_kind(tag)}")
    if data.get("weights") is not None:
        raise ConfigError("sweep: give either 'weights' or 'pretrained', not both")
    return tag


def _parse_prune(value: Any) -> dict[str, Any] | None:
    """``prune: true`` (the reference's 9 × 9 levels) or ``{token_levels: [...], piece_levels: [...], ...}``."""
    if value in (None, False):
        return None
    if value is True:
        return {}
    if not isinstance(value, dict) or set(value) - set(_PRUNE_KEYS):
        raise ConfigError(f"sweep: 'prune' must be true or a mapping with keys {list(_PRUNE_KEYS)}, got {value!r}")
    out: dict[str, Any] = {}
    for key in ("token_levels", "piece_levels"):
        if key in value:
            levels = _number_list(f"prune.{key}", value[key])
            if not levels:
                raise ConfigError(f"sweep: prune.{key} must not be empty")
            out[key] = levels
    for key in ("min_tokens", "min_pieces"):
        if key in value:
            if not _is_int(value[key]):
                raise ConfigError(f"sweep: 'prune.{key}' must be an integer; got {_kind(value[key])}")
            out[key] = value[key]
    return out


def load_sweep(path: str | Path, **replace: Any) -> Sweep:
    """Read a sweep YAML file; keyword arguments (``out=``, ``data_root=``) replace its fields when not None
    (``weights=`` or ``pretrained=`` replaces both of the file's backbone sources).

    Example:
        >>> runs = load_sweep("sweeps/dept_b2n.yaml", data_root="~/data").expand()
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: '{path}'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file '{path}' is not valid YAML: {e}") from e
    if isinstance(data, dict):
        if replace.get("weights") is not None or replace.get("pretrained") is not None:
            data = {k: v for k, v in data.items() if k not in ("weights", "pretrained")}  # one replaces the other
        paths = ("out", "data_root", "weights", "cache_dir")
        data = {**data, **{k: os.path.abspath(os.path.expanduser(v)) if k in paths else v
                           for k, v in replace.items() if v is not None}}
    return parse_sweep(data, base_dir=path.parent)
