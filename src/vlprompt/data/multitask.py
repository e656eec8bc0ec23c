"""Multi-task task groups (SoftCPT): several datasets, each with a task name, trained jointly.

A group is loaded into one :class:`~vlprompt.data.task.Task` whose class list is the
concatenation of the member tasks' class lists and whose labels are *global* (task ``t``'s
label ``c`` becomes ``offset_t + c``), so a batch drawn from the merged training set mixes all
tasks and every label still says which task its sample belongs to. ``task.extra["tasks"]``
describes the members (in order)::

    {"name": "eurosat", "task_name": "satellite image classification", "offset": 0,
     "num_classes": 10, "metric": "overall_acc", "description": ""}

Few-shot sampling (K per class in train, ``min(K, 4)`` in val) and base/new subsampling (first
``ceil(n/2)`` classes *of each task*) are applied per task before merging.

Every sample keeps its member task's training augmentation policy (``Sample.augment``: the tiny
suite's digits train with ``none``, its real textures with ``crop``, real datasets with ``clip``); the
group's ``Task.augment`` is the members' common policy, or ``"per-sample"`` when they differ.
``TrainConfig.augment`` still overrides every sample's policy.

A group is given as:

* ``"tiny-group/<name>"``: a task group of the tiny suite (``synthetic``, ``real``);
* ``"general10"``, ``"plant6"``, ``"fashion20"``: SoftCPT's groups by name, read from the data root
  (:mod:`vlprompt.data.named_groups`);
* a YAML file (``.yaml`` / ``.yml``) holding a list of members or ``{name:, root:, tasks: [...]}``;
* a list of members (Python) or a comma-separated string of dataset names (``"eurosat,dtd"``);
* a SoftCPT split file ``split_dk_<Name>.json`` (every task its ``meta`` block lists).

A member is a registered dataset name, or a mapping with ``dataset`` (+ optional ``root``,
``task_name``, ``metric``, ``split: dk`` to read the dataset folder's ``split_dk_*.json`` instead of
the registered loader's split) or ``split_dk`` (+ optional ``image_dir``, ``task_name``, and
``dataset``: the registered dataset whose SoftCPT class reads the file, when its name does not say);
``name`` renames a single-task member (its key in ``per_task``).

The SoftCPT split format (``split_dk_<Name>.json``) is CoOp's ``save_split`` JSON whose entries are
``[relative_path, [label], [task]]`` (a label and a task id, each in a one-element list; plain
integers are accepted too) plus a ``meta`` block with per-task lists ``taskid2cname`` (class names),
``taskid2tname`` (task names), ``taskid2desc``, ``taskid2type`` (only ``"sl"``, single-label) and
``taskid2metric`` (``overall_acc`` or ``mean_acc``). As SoftCPT's dataset classes do, the class names
of Caltech101's and EuroSAT's files are renamed (``Faces`` → ``face``, ``AnnualCrop`` →
``Annual Crop Land``) and a file's paths start from that class's image folder beside the file
(:data:`DK_DATASETS`). Missing ``taskid2tname`` is read from
``task_name.txt`` beside the file; missing ``taskid2type`` / ``taskid2metric`` default to ``sl`` /
``overall_acc``.

Example:
    >>> group = load_task_group("tiny-group/real", None, shots=16, seed=1)
    >>> [t["task_name"] for t in group.extra["tasks"]]
    ['handwritten digit recognition', 'real texture recognition']
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vlprompt.errors import ConfigError, DatasetError

from .coop_datasets import EUROSAT_NEW_CNAMES
from .fewshot import apply_few_shot, check_train_classes, subsample_classes
from .layout import abspath, check_inside, pretty_classname
from .named_groups import layout_error, named_group, named_group_members
from .task import Sample, Task
from .transforms import PER_SAMPLE

TINY_GROUP_PREFIX = "tiny-group/"
METRICS = ("overall_acc", "mean_acc")

#: Task names for the registered CoOp datasets when the dataset folder has no ``task_name.txt``
#: (the reference does not ship its files; these are vlprompt's own phrasing).
DEFAULT_TASK_NAMES: dict[str, str] = {
    "caltech101": "generic object recognition",
    "dtd": "texture recognition",
    "eurosat": "satellite image classification",
    "fgvc_aircraft": "aircraft model recognition",
    "food101": "food recognition",
    "imagenet": "generic object recognition",
    "oxford_flowers": "flower recognition",
    "oxford_pets": "pet breed recognition",
    "stanford_cars": "car model recognition",
    "sun397": "scene recognition",
    "ucf101": "human action recognition",
}

#: Per-dataset metric of the reference (``DatasetBaseMT.taskid2metric``); others use ``overall_acc``.
DEFAULT_METRICS: dict[str, str] = {
    "caltech101": "mean_acc", "oxford_flowers": "mean_acc", "oxford_pets": "mean_acc", "fgvc_aircraft": "mean_acc",
}

#: SoftCPT's Caltech101 class renames (``datasets/caltech101.py``, applied after reading a split file).
CALTECH101_NEW_CNAMES: dict[str, str] = {
    "airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike",
}

#: SoftCPT's dataset classes that read a ``split_dk_<Name>.json`` (reference ``datasets/*.py``), by
#: ``<Name>``: the image folder inside the file's folder that the entries' paths start from ("" = that
#: folder), and the renames the class applies to the stored class names (Caltech101, EuroSAT). The
#: ``split: dk`` member of a registered dataset finds its entry by the dataset's registry name.
DK_DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "Caltech101": ("101_ObjectCategories", CALTECH101_NEW_CNAMES),
    "DescribableTextures": ("images", {}),
    "EuroSAT": ("2750", EUROSAT_NEW_CNAMES),
    "Fashion20": ("images", {}),
    "Food101": ("images", {}),
    "FruitVegetable": ("images", {}),
    "kaggle_flower": ("flowers", {}),
    "KaggleMushroom": ("Mushrooms", {}),
    "KaggleVegetable": ("images", {}),
    "OxfordFlowers": ("jpg", {}),
    "OxfordPets": ("images", {}),
    "PlantSeedlingV1": ("Nonsegmented", {}),
    "PlantVillage": ("Plant_leave_diseases_dataset_without_augmentation", {}),
    "StanfordCars": ("", {}),
    "SUN397": ("SUN397", {}),
    "UCF101": ("UCF-101-midframes", {}),
}
_DK_ALIASES = {"dtd": "DescribableTextures"}  # registry names that differ from the file's <Name>


def dk_reference_dataset(name: str) -> str | None:
    """The key of :data:`DK_DATASETS` for a split file's ``<Name>`` or a registry name (case, ``-`` and
    ``_`` ignored), or ``None`` when no SoftCPT dataset class reads it."""
    def key(s: str) -> str:
        return s.lower().replace("-", "").replace("_", "")

    k = key(name)
    for alias, target in _DK_ALIASES.items():
        if k == key(alias):
            return target
    return next((d for d in DK_DATASETS if key(d) == k), None)


_DK_FORMAT = ('a JSON object {"train": [[relative_path, [label], [task]], ...], "val": [...], "test": [...], '
              '"meta": {"taskid2cname": [[classname, ...], ...], "taskid2tname": [task name, ...], ...}}')


def is_group_spec(spec: object) -> bool:
    """Whether ``spec`` names a task group rather than a single dataset."""
    if isinstance(spec, (list, tuple)):
        return True
    if not isinstance(spec, (str, os.PathLike)):
        return False
    s = os.fspath(spec)
    base = os.path.basename(s)
    return (s.startswith(TINY_GROUP_PREFIX) or named_group(s) is not None or s.endswith((".yaml", ".yml")) or "," in s
            or (base.startswith("split_dk_") and base.endswith(".json")))


def task_structure(task: Task) -> tuple[tuple[str, int], ...]:
    """``((task_name, num_classes), ...)`` of a loaded group (the ``tasks`` option of SoftCPT).

    A single dataset with a task name (tiny suite, CoOp datasets) gives one entry; otherwise ``()``.

    Example:
        >>> model = vp.build_method("softcpt-nata", bb, group.classnames, tasks=task_structure(group))
    """
    if task.extra.get("tasks"):
        return tuple((t["task_name"], t["num_classes"]) for t in task.extra["tasks"])
    name = task.extra.get("task_name") or DEFAULT_TASK_NAMES.get(task.name)
    return ((name, task.num_classes),) if name else ()


# ------------------------------------------------------------------------------ split_dk files
def _first_line(path: Path) -> str | None:
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines[0] if lines else None


def _one_int(value: object, what: str, path: Path, split: str, index: int) -> int:
    if isinstance(value, list):
        if len(value) != 1:
            raise DatasetError(
                f"split file '{path}': entry {index} of '{split}' has {len(value)} {what}s {value!r}; only "
                "single-label tasks (one label and one task per image) are supported"
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"split file '{path}': entry {index} of '{split}' has {what} {value!r}; "
                           f"expected {_DK_FORMAT}")
    return value


def read_split_dk(
    path: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None, dataset: str | None = None,
) -> list[Task]:
    """The tasks of a SoftCPT ``split_dk_<Name>.json`` file, one :class:`Task` each (local labels).

    The SoftCPT dataset class that reads the file is found from ``dataset`` (a registry name, e.g.
    ``"eurosat"``) or else from ``<Name>`` (:data:`DK_DATASETS`); as in the reference, its class
    renames are applied to the stored class names (``AnnualCrop`` → ``Annual Crop Land``) before
    underscores become spaces, and its image folder beside the file (``2750/`` for EuroSAT) is where
    the relative paths start. ``image_dir`` overrides the folder; for a file no SoftCPT class reads, the
    default is ``images/`` beside the file if it exists, else the file's folder. Every listed image
    must exist.

    Raises:
        DatasetError: unreadable file, missing keys, a malformed entry, or listed images that do not
            exist under the image folder (the message names the file and the folder).

    Example:
        >>> (task,) = read_split_dk("~/data/eurosat/split_dk_EuroSAT.json")   # images in eurosat/2750/
        >>> task.classnames[0]
        'Annual Crop Land'
    """
    path = abspath(path)
    stem = path.stem[len("split_dk_"):] if path.stem.startswith("split_dk_") else path.stem
    ref = dk_reference_dataset(dataset) if dataset else None
    ref = ref or dk_reference_dataset(stem)
    ref_subdir, renames = DK_DATASETS[ref] if ref else (None, {})
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"SoftCPT split file '{path}' does not exist; expected {_DK_FORMAT}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"SoftCPT split file '{path}' is not valid JSON ({exc}); expected {_DK_FORMAT}") from exc
    missing = [k for k in ("train", "val", "test", "meta") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetError(f"SoftCPT split file '{path}' has no {', '.join(map(repr, missing))}; expected {_DK_FORMAT}")
    meta = data["meta"]
    cnames = meta.get("taskid2cname") if isinstance(meta, dict) else None
    if not (isinstance(cnames, list) and cnames and all(isinstance(c, list) and c for c in cnames)):
        raise DatasetError(f"SoftCPT split file '{path}': meta.taskid2cname must be a list of class-name lists; "
                           f"expected {_DK_FORMAT}")
    n_tasks = len(cnames)

    def per_task(key: str, default: Any) -> list[Any]:
        value = meta.get(key)
        if value is None:
            return [default] * n_tasks
        if not isinstance(value, list) or len(value) != n_tasks:
            raise DatasetError(f"SoftCPT split file '{path}': meta.{key} must list one value per task ({n_tasks})")
        return value

    if meta.get("taskid2tname") is not None:
        tnames = per_task("taskid2tname", None)
    else:
        name = _first_line(path.parent / "task_name.txt")
        if name is None or n_tasks != 1:
            raise DatasetError(f"SoftCPT split file '{path}' has no meta.taskid2tname and there is no "
                               f"'task_name.txt' beside it (one line: the task name)")
        tnames = [name]
    types = per_task("taskid2type", "sl")
    metrics = per_task("taskid2metric", "overall_acc")
    descs = per_task("taskid2desc", "")
    for t, (typ, metric) in enumerate(zip(types, metrics, strict=True)):
        if typ != "sl":
            raise DatasetError(f"SoftCPT split file '{path}': task {t} has type {typ!r}; only 'sl' (single-label) "
                               "tasks are supported")
        if metric not in METRICS:
            raise DatasetError(f"SoftCPT split file '{path}': task {t} has metric {metric!r}; "
                               f"expected one of {METRICS}")
    if image_dir is None and ref_subdir is not None:
        image_dir = path.parent / ref_subdir
    elif image_dir is None:
        image_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    image_dir = abspath(image_dir)
    base = os.fspath(image_dir)
    names = [[pretty_classname(renames.get(str(c), str(c))) for c in cn] for cn in cnames]
    splits: list[dict[str, list[Sample]]] = [{"train": [], "val": [], "test": []} for _ in range(n_tasks)]
    for split in ("train", "val", "test"):
        items = data[split]
        if not isinstance(items, list):
            raise DatasetError(f"SoftCPT split file '{path}': '{split}' is not a list; expected {_DK_FORMAT}")
        for i, item in enumerate(items):
            if not (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)):
                raise DatasetError(f"SoftCPT split file '{path}': entry {i} of '{split}' is {item!r}; "
                                   f"expected [relative_path, [label], [task]]")
            label = _one_int(item[1], "label", path, split, i)
            t = _one_int(item[2], "task", path, split, i)
            if t >= n_tasks or label >= len(names[t]):
                raise DatasetError(f"SoftCPT split file '{path}': entry {i} of '{split}' has task {t} / label "
                                   f"{label}, outside meta.taskid2cname ({n_tasks} tasks)")
            rel = check_inside(item[0], f"SoftCPT split file '{path}': entry {i} of '{split}'", image_dir)
            splits[t][split].append(Sample(os.path.join(base, rel), label, names[t][label]))
    _check_images(path, image_dir, splits, ref)
    tasks = []
    for t in range(n_tasks):
        tname = pretty_classname(str(tnames[t]))
        tasks.append(Task(
            name=stem if n_tasks == 1 else f"{stem}/{tname}", classnames=names[t], template="a photo of a {}.",
            train=splits[t]["train"], val=splits[t]["val"], test=splits[t]["test"], root=path.parent,
            image_dir=image_dir,
            extra={"task_name": tname, "metric": metrics[t], "description": descs[t], "split_file": str(path)},
        ))
    return tasks


def _check_images(path: Path, image_dir: Path, splits: list[dict[str, list[Sample]]], ref: str | None) -> None:
    """Every image a split file lists exists, or one error naming the folder the paths were joined to."""
    missing = [s.path for per in splits for items in per.values() for s in items if not os.path.isfile(s.path)]
    if not missing:
        return
    total = sum(len(items) for per in splits for items in per.values())
    if ref is not None:
        sub = DK_DATASETS[ref][0]
        where = (f"SoftCPT's {ref} reads them from '{sub}/' beside the file" if sub else
                 f"SoftCPT's {ref} reads them from the file's folder")
    else:
        where = "without an image_dir they are read from 'images/' beside the file if it exists, else its folder"
    raise DatasetError(
        f"SoftCPT split file '{path}': {len(missing)} of {total} listed images do not exist under '{image_dir}' "
        f"(first: '{missing[0]}'); expected the entries' paths relative to that folder ({where}; another "
        "folder: a group .yaml member {split_dk: <file>, image_dir: <folder>})")


# ------------------------------------------------------------------------------ group specs
def _tiny_group(name: str, root: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    from .tiny import ensure_suite

    suite = ensure_suite(root)
    groups = json.loads((suite / "groups.json").read_text(encoding="utf-8"))
    if name not in groups:
        raise ConfigError(f"tiny suite has no task group {name!r}; groups: {sorted(groups)} "
                          f"(use '{TINY_GROUP_PREFIX}<group>')")
    return [{"dataset": f"tiny/{t}", "root": str(suite)} for t in groups[name]]


def read_group_config(path: str | os.PathLike[str]) -> tuple[str, list[Any], str | None]:
    """``(name, members, root)`` of a YAML group file (a list, or ``{name, root, tasks}``).

    Relative ``root`` / ``split_dk`` / ``image_dir`` paths are resolved against the file's folder.
    """
    path = abspath(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read task-group file '{path}': {exc}") from exc
    name, root = path.stem, None
    if isinstance(data, dict):
        name = str(data.get("name", name))
        root = data.get("root")
        data = data.get("tasks")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"task-group file '{path}' must hold a list of datasets or {{name, root, tasks: [...]}}")

    def resolve(p: str) -> str:
        p = os.path.expanduser(str(p))
        return p if os.path.isabs(p) else os.fspath(path.parent / p)

    members = []
    for m in data:
        if isinstance(m, dict):
            m = {k: (resolve(v) if k in ("root", "split_dk", "image_dir") else v) for k, v in m.items()}
        members.append(m)
    return name, members, resolve(root) if root else None


def _member_tasks(member: Any, root: str | os.PathLike[str] | None, check_train: bool = True) -> list[Task]:
    """The full (not few-shot) tasks of one group member, with ``extra`` task names and metrics."""
    from . import load_dataset
    from .registry import canonical_name

    if isinstance(member, str):
        member = {"dataset": member}
    if not isinstance(member, dict) or not ({"dataset", "split_dk"} & set(member)):
        raise ConfigError(f"task-group member {member!r}: expected a dataset name or a mapping with 'dataset' or "
                          "'split_dk'")
    unknown = set(member) - {"dataset", "root", "split_dk", "image_dir", "task_name", "metric", "split", "name"}
    if unknown:
        raise ConfigError(f"task-group member {member!r}: unknown key(s) {sorted(unknown)}")
    if "split_dk" in member:
        tasks = read_split_dk(member["split_dk"], member.get("image_dir"), dataset=member.get("dataset"))
    else:
        ds = member["dataset"]
        task = load_dataset(ds, member.get("root", root), check_train=check_train)
        if member.get("split") == "dk":
            found = sorted(Path(task.root).glob("split_dk_*.json"))
            if len(found) != 1:
                raise DatasetError(f"dataset {ds!r}: expected one split_dk_<Name>.json in '{task.root}', found "
                                   f"{[f.name for f in found]}")
            tasks = read_split_dk(found[0], task.image_dir or task.root, dataset=canonical_name(ds))
            for t in tasks:
                t.name = task.name
        elif member.get("split", "default") != "default":
            raise ConfigError(f"task-group member {member!r}: split must be 'dk' or 'default'")
        else:
            canon = canonical_name(ds)
            tname = (_first_line(Path(task.root) / "task_name.txt") or task.extra.get("task_name")
                     or DEFAULT_TASK_NAMES.get(canon) or f"{pretty_classname(canon)} classification")
            task.extra = {**task.extra, "task_name": tname, "metric": DEFAULT_METRICS.get(canon, "overall_acc")}
            tasks = [task]
    if len(tasks) > 1 and ({"task_name", "name"} & set(member)):
        raise ConfigError(f"task-group member {member!r}: task_name / name apply to single-task members only")
    if "name" in member:
        tasks[0].name = str(member["name"])
    for t in tasks:
        if "task_name" in member:
            t.extra["task_name"] = str(member["task_name"])
        if "metric" in member:
            if member["metric"] not in METRICS:
                raise ConfigError(f"task-group member {member!r}: metric must be one of {METRICS}")
            t.extra["metric"] = member["metric"]
    return tasks


def merge_tasks(tasks: Sequence[Task], name: str) -> Task:
    """One task with every member's classes (concatenated) and global labels; see the module docstring."""
    if not tasks:
        raise ConfigError(f"task group {name!r} has no tasks")
    info, classnames, seen = [], [], set()
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for t in tasks:
        key, k = t.name, 2
        while key in seen:
            key, k = f"{t.name}#{k}", k + 1
        seen.add(key)
        off = len(classnames)
        info.append({"name": key, "task_name": t.extra.get("task_name") or pretty_classname(t.name),
                     "offset": off, "num_classes": t.num_classes, "metric": t.extra.get("metric", "overall_acc"),
                     "description": t.extra.get("description", ""), "augment": t.augment,
                     "template": t.template})
        classnames += t.classnames
        for split in splits:
            # every sample keeps its member task's training augmentation policy
            splits[split] += [Sample(s.path, s.label + off, s.classname, s.augment or t.augment)
                              for s in getattr(t, split)]
    dirs = [os.fspath(abspath(t.image_dir or t.root)) for t in tasks]
    common = Path(os.path.commonpath(dirs))
    first = tasks[0]
    policies = {s.augment for s in splits["train"]} or {first.augment}
    augment = policies.pop() if len(policies) == 1 else PER_SAMPLE
    return Task(name=name, classnames=classnames, template="a photo of a {}.", train=splits["train"],
                val=splits["val"], test=splits["test"], root=common, shots=first.shots, seed=first.seed,
                subsample=first.subsample, image_dir=common, augment=augment, extra={"group": name, "tasks": info})


def split_group(group: Task) -> list[Task]:
    """The member tasks of a loaded group, each as a one-task group with local labels.

    Each keeps its own template, augmentation policy and metric (``extra["tasks"]`` lists only
    itself, at offset 0), so a single-task method (zero-shot, linear probe) trained and evaluated on
    it reports the task's accuracy exactly as the group's per-task evaluation does.

    Example:
        >>> [t.name for t in split_group(vp.load_dataset("tiny-group/real", None, shots=4))]
        ['tiny/digits', 'tiny/real_textures']
    """
    infos = group.extra.get("tasks")
    if not infos:
        raise ConfigError(f"{group.name!r} is not a task group")
    out = []
    for info in infos:
        lo, n = info["offset"], info["num_classes"]

        def pick(samples: list[Sample], lo: int = lo, n: int = n) -> list[Sample]:
            return [Sample(s.path, s.label - lo, s.classname, s.augment) for s in samples if lo <= s.label < lo + n]

        train = pick(group.train)
        policies = {s.augment for s in train}
        out.append(group.with_splits(
            name=info["name"], classnames=group.classnames[lo:lo + n], template=info.get("template", group.template),
            train=train, val=pick(group.val), test=pick(group.test),
            augment=policies.pop() if len(policies) == 1 else info.get("augment", "clip"),
            extra={"group": group.name, "task_name": info["task_name"], "tasks": [{**info, "offset": 0}]},
        ))
    return out


def load_task_group(
    group: str | os.PathLike[str] | Sequence[Any],
    root: str | os.PathLike[str] | None = None,
    shots: int | None = 16,
    seed: int = 1,
    subsample: str = "all",
    check_train: bool = True,
) -> Task:
    """Load a task group (see the module docstring), few-shot sampled and subsampled per task.

    ``check_train=False`` (evaluation only) skips the check that every class has a training image.

    Args:
        group: ``"tiny-group/<name>"``, a YAML group file, a ``split_dk_*.json`` file, a list of members
            or ``"name1,name2"``.
        root: data root of members that name registered datasets.
        shots: K per class in train (val ``min(K, 4)``) per task; ``None`` keeps everything.
        seed: seed of the few-shot sample.
        subsample: ``all``, ``base`` or ``new`` classes of every task.

    Example:
        >>> group = vp.load_task_group("tiny-group/synthetic", None, shots=16, seed=1)
        >>> group.extra["tasks"][0]["task_name"]
        'shape recognition'
    """
    root = root or None
    if isinstance(group, (list, tuple)):
        name, members = "+".join(m if isinstance(m, str) else str(m.get("dataset") or Path(m["split_dk"]).stem)
                                 for m in group), list(group)
    else:
        s = os.fspath(group)
        if s.startswith(TINY_GROUP_PREFIX):
            name, members = s, _tiny_group(s[len(TINY_GROUP_PREFIX):], root)
        elif named_group(s) is not None:
            name, members = named_group(s), named_group_members(s, root)
        elif s.endswith((".yaml", ".yml")):
            name, members, file_root = read_group_config(s)
            root = file_root or root
        elif os.path.basename(s).startswith("split_dk_") and s.endswith(".json"):
            name, members = Path(s).stem[len("split_dk_"):], [{"split_dk": s}]
        elif "," in s:
            members = [m.strip() for m in s.split(",") if m.strip()]
            name = "+".join(members)
        else:
            raise ConfigError(f"{s!r} is not a task group; expected '{TINY_GROUP_PREFIX}<name>', a .yaml file, a "
                              "split_dk_<Name>.json file or comma-separated dataset names")
    try:
        tasks = [t for m in members for t in _member_tasks(m, root, check_train)]
    except DatasetError as exc:
        if isinstance(group, str) and named_group(group) is not None:
            raise layout_error(group, exc) from exc
        raise
    out = []
    for t in tasks:
        t.seed = seed
        if shots is not None:
            t = apply_few_shot(t, shots, seed)
        out.append(subsample_classes(t, subsample))
    merged = merge_tasks(out, name)
    return check_train_classes(merged) if check_train else merged
