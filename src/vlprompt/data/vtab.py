"""VTAB-1k in the extracted-images + txt-list layout (NOAH / E2VPT / V-PETL Bench), registered as ``vtab/<task>``.

Layout (``root`` is ``$DATA``, the ``vtab-1k`` folder, or one task folder)::

    $DATA/vtab-1k/<task>/
        train800.txt  val200.txt  train800val200.txt  test.txt   ("<relative/path> <label>" per line)
        images/...                                               (paths in the lists are relative to <task>/)
        classnames.txt                                           (optional: one class name per line, label order)

``<task>`` is one of the 19 canonical folder names of that layout: ``cifar``, ``caltech101``, ``dtd``,
``oxford_flowers102``, ``oxford_iiit_pet``, ``svhn``, ``sun397`` (Natural); ``patch_camelyon``, ``eurosat``,
``resisc45``, ``diabetic_retinopathy`` (Specialized); ``clevr_count``, ``clevr_dist``, ``dmlab``, ``kitti``,
``dsprites_loc``, ``dsprites_ori``, ``smallnorb_azi``, ``smallnorb_ele`` (Structured).

Splits: a loaded task has ``train`` = train800, ``val`` = val200, ``test`` = test. The protocol's two
stages are selected with :func:`select_split` (or ``load_dataset(..., split=...)``):

* ``"tune"``: train on train800, evaluate on val200 (``test`` = ``val`` = val200);
* ``"final"``: train on train800val200, evaluate on test (``val`` empty).

Class names: VTAB's label ids come from TFDS and most tasks have no names in the extracted layout.
Classifier methods (a linear head) need only the count; CLIP-style methods need text, so every task
gets names (see :data:`VTAB_TASKS` and ``docs/vtab.md``): the datasets' own label names where the TFDS
order is known (CIFAR-100, DTD, Flowers-102, Pets, SVHN digits, EuroSAT, RESISC45, Camelyon, retinopathy
grades), descriptive bin names for the structured tasks (counts, angles, positions, distance bins), and
``"<task> class N"`` placeholders for Caltech101 / SUN397 / DMLab. A ``classnames.txt`` in the task folder
overrides them (one name per line; its length must equal the class count).

Example:
    >>> import vlprompt as vp
    >>> task = vp.load_dataset("vtab/dtd", "~/data", split="tune")   # train800 -> val200
    >>> task.extra["vtab_group"], task.num_classes
    ('natural', 47)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlprompt.errors import ConfigError, DatasetError

from .coop_datasets import EUROSAT_NEW_CNAMES
from .layout import abspath, check_inside, check_some_exist, pretty_classname, read_text_lines
from .registry import register_dataset
from .task import Sample, Task

#: The list files of one VTAB-1k task folder.
VTAB_LISTS = ("train800", "val200", "train800val200", "test")
#: Protocol stages: name -> (training list, evaluation list).
VTAB_SPLITS: dict[str, tuple[str, str]] = {"tune": ("train800", "val200"), "final": ("train800val200", "test")}
#: Folder names accepted for the VTAB-1k directory under ``$DATA``.
VTAB_DIRS = ("vtab-1k", "vtab1k", "VTAB-1k", "VTAB-1K", "vtab")
GROUPS = ("natural", "specialized", "structured")
_LAYOUT = (
    "train800.txt        ('<relative/path> <label>' per line)",
    "val200.txt",
    "train800val200.txt",
    "test.txt",
    "images/...          (the list paths are relative to this folder)",
    "classnames.txt      (optional)",
)

CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
DTD47 = (
    "banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous flecked "
    "freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted meshed paisley "
    "perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled stained stratified "
    "striped studded swirly veined waffled woven wrinkled zigzagged"
).split()
#: Oxford Flowers-102 names in label order (label = official image label - 1).
FLOWERS102 = (
    "pink primrose|hard-leaved pocket orchid|canterbury bells|sweet pea|english marigold|tiger lily|moon orchid|"
    "bird of paradise|monkshood|globe thistle|snapdragon|colt's foot|king protea|spear thistle|yellow iris|"
    "globe-flower|purple coneflower|peruvian lily|balloon flower|giant white arum lily|fire lily|pincushion flower|"
    "fritillary|red ginger|grape hyacinth|corn poppy|prince of wales feathers|stemless gentian|artichoke|"
    "sweet william|carnation|garden phlox|love in the mist|mexican aster|alpine sea holly|ruby-lipped cattleya|"
    "cape flower|great masterwort|siam tulip|lenten rose|barbeton daisy|daffodil|sword lily|poinsettia|"
    "bolero deep blue|wallflower|marigold|buttercup|oxeye daisy|common dandelion|petunia|wild pansy|primula|"
    "sunflower|pelargonium|bishop of llandaff|gaura|geranium|orange dahlia|pink-yellow dahlia|cautleya spicata|"
    "japanese anemone|black-eyed susan|silverbush|californian poppy|osteospermum|spring crocus|bearded iris|"
    "windflower|tree poppy|gazania|azalea|water lily|rose|thorn apple|morning glory|passion flower|lotus|toad lily|"
    "anthurium|frangipani|clematis|hibiscus|columbine|desert-rose|tree mallow|magnolia|cyclamen|watercress|"
    "canna lily|hippeastrum|bee balm|ball moss|foxglove|bougainvillea|camellia|mallow|mexican petunia|bromelia|"
    "blanket flower|trumpet creeper|blackberry lily"
).split("|")
PETS37 = (
    "Abyssinian american_bulldog american_pit_bull_terrier basset_hound beagle Bengal Birman Bombay boxer "
    "British_Shorthair chihuahua Egyptian_Mau english_cocker_spaniel english_setter german_shorthaired "
    "great_pyrenees havanese japanese_chin keeshond leonberger Maine_Coon miniature_pinscher newfoundland Persian "
    "pomeranian pug Ragdoll Russian_Blue saint_bernard samoyed scottish_terrier shiba_inu Siamese Sphynx "
    "staffordshire_bull_terrier wheaten_terrier yorkshire_terrier"
).split()
RESISC45 = (
    "airplane airport baseball_diamond basketball_court beach bridge chaparral church circular_farmland cloud "
    "commercial_area dense_residential desert forest freeway golf_course ground_track_field harbor industrial_area "
    "intersection island lake meadow medium_residential mobile_home_park mountain overpass palace parking_lot "
    "railway railway_station rectangular_farmland river roundabout runway sea_ice ship snowberg sparse_residential "
    "stadium storage_tank tennis_court terrace thermal_power_station wetland"
).split()
EUROSAT10 = tuple(EUROSAT_NEW_CNAMES.values())  # TFDS order = the folder names' sorted order


def _numbered(task: str, n: int) -> tuple[str, ...]:
    return tuple(f"{task} class {i}" for i in range(n))


@dataclass(frozen=True)
class VtabSpec:
    """One VTAB-1k task.

    Attributes:
        folder: canonical folder name in the extracted layout (``vtab/<folder>`` is the registry name).
        group: ``natural``, ``specialized`` or ``structured``.
        classnames: default class names, label order (their count is the task's class count).
        template: zero-shot template with ``{}``.
        tfds: the TFDS dataset / VTAB task it is extracted from (documentation).
        aliases: extra registry names.
        named: True if the names are the dataset's own labels, False for descriptive bins/placeholders.
    """

    folder: str
    group: str
    classnames: tuple[str, ...]
    template: str
    tfds: str
    aliases: tuple[str, ...] = ()
    named: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def name(self) -> str:
        return f"vtab/{self.folder}"


VTAB_TASKS: tuple[VtabSpec, ...] = (
    VtabSpec("cifar", "natural", tuple(pretty_classname(c) for c in CIFAR100), "a photo of a {}.",
             "cifar100 (fine labels)", ("cifar100", "cifar_100")),
    VtabSpec("caltech101", "natural", _numbered("caltech101", 102), "a photo of a {}.", "caltech101 (102 labels)",
             ("caltech",), named=False),
    VtabSpec("dtd", "natural", tuple(DTD47), "{} texture.", "dtd"),
    VtabSpec("oxford_flowers102", "natural", tuple(FLOWERS102), "a photo of a {}, a type of flower.",
             "oxford_flowers102", ("flowers102", "flowers")),
    VtabSpec("oxford_iiit_pet", "natural", tuple(pretty_classname(c) for c in PETS37),
             "a photo of a {}, a type of pet.", "oxford_iiit_pet", ("pets", "oxford_pets")),
    VtabSpec("svhn", "natural", tuple(str(i) for i in range(10)), 'a photo of the number: "{}".', "svhn_cropped"),
    VtabSpec("sun397", "natural", _numbered("sun397", 397), "a photo of a {}.", "sun397", ("sun",), named=False),
    VtabSpec("patch_camelyon", "specialized", ("normal lymph node tissue", "lymph node tissue with metastatic tumor"),
             "a histopathology image of {}.", "patch_camelyon", ("camelyon", "pcam")),
    VtabSpec("eurosat", "specialized", EUROSAT10, "a centered satellite photo of {}.", "eurosat (rgb)"),
    VtabSpec("resisc45", "specialized", tuple(pretty_classname(c) for c in RESISC45),
             "a satellite photo of {}.", "resisc45"),
    VtabSpec("diabetic_retinopathy", "specialized",
             tuple(f"{g} diabetic retinopathy" for g in ("no", "mild", "moderate", "severe", "proliferative")),
             "a retina image with {}.", "diabetic_retinopathy_detection/btgraham-300", ("retinopathy", "dr")),
    VtabSpec("clevr_count", "structured", tuple(str(i) for i in range(3, 11)), "a picture of {} objects.",
             "clevr: count_all (label = objects - 3)", ("clevr_count_all",)),
    VtabSpec("clevr_dist", "structured",
             ("very close", "close", "somewhat close", "somewhat far", "far", "very far"),
             "a picture whose nearest object is {}.", "clevr: closest_object_distance (6 bins)",
             ("clevr_distance", "clevr_closest_object_distance"), named=False),
    VtabSpec("dmlab", "structured", _numbered("dmlab", 6), "a picture of {}.", "dmlab", named=False),
    VtabSpec("kitti", "structured", ("a very close vehicle", "a close vehicle", "a distant vehicle", "no vehicle"),
             "a driving scene with {}.", "kitti: closest_vehicle_distance (4 bins)",
             ("kitti_dist", "kitti_distance"), named=False),
    VtabSpec("dsprites_loc", "structured", tuple(f"horizontal position {i + 1} of 16" for i in range(16)),
             "a white shape at {}.", "dsprites: label_x_position (16 bins)", ("dsprites_location",), named=False),
    VtabSpec("dsprites_ori", "structured",
             tuple(f"{i * 22.5:g} degrees" for i in range(16)), "a white shape rotated by {}.",
             "dsprites: label_orientation (16 bins)", ("dsprites_orientation",), named=False),
    VtabSpec("smallnorb_azi", "structured", tuple(f"azimuth {20 * i} degrees" for i in range(18)),
             "a toy seen from {}.", "smallnorb: label_azimuth", ("smallnorb_azimuth",), named=False),
    VtabSpec("smallnorb_ele", "structured", tuple(f"elevation {30 + 5 * i} degrees" for i in range(9)),
             "a toy seen from {}.", "smallnorb: label_elevation", ("smallnorb_elevation",), named=False),
)
VTAB_BY_FOLDER: dict[str, VtabSpec] = {s.folder: s for s in VTAB_TASKS}

#: VTAB group of the tiny suite's VTAB-like tasks (by the real task each one imitates).
TINY_VTAB_GROUPS: dict[str, str] = {
    "tiny/vtab_eurosat": "specialized",
    "tiny/vtab_clevr_count": "structured",
    "tiny/vtab_dsprites_location": "structured",
}


def vtab_group(name: str) -> str | None:
    """The VTAB group (``natural`` / ``specialized`` / ``structured``) of a dataset name, ``"fgvc"`` for
    FGVC datasets, None otherwise.

    Example:
        >>> vtab_group("vtab/kitti"), vtab_group("fgvc/cub"), vtab_group("eurosat")
        ('structured', 'fgvc', None)
    """
    if name.startswith("vtab/") and name[5:] in VTAB_BY_FOLDER:
        return VTAB_BY_FOLDER[name[5:]].group
    if name.startswith("fgvc/"):
        return "fgvc"
    return TINY_VTAB_GROUPS.get(name)


# --------------------------------------------------------------------------------------------- reading
def read_vtab_list(path: Path, task_dir: Path, num_classes: int, classnames: list[str]) -> list[Sample]:
    """Samples of one ``"<relative/path> <label>"`` list file (paths relative to ``task_dir``).

    Raises:
        DatasetError: a malformed line or a label outside ``0 .. num_classes - 1``.
    """
    out = []
    for n, line in enumerate(read_text_lines(path), 1):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(
                f"line {n} of '{path}' is {line!r}; expected '<relative/image/path> <integer label>'"
            )
        check_inside(parts[0], f"line {n} of '{path}'", task_dir)
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise DatasetError(
                f"line {n} of '{path}' has label {label}; expected 0..{num_classes - 1} "
                f"({num_classes} classes)"
            )
        out.append(Sample(os.path.join(os.fspath(task_dir), parts[0]), label, classnames[label]))
    return out


def read_vtab_lists(task_dir: Path, classnames: list[str], display: str) -> dict[str, list[Sample]]:
    """The four lists of a task folder: ``{"train800": [...], "val200": [...], ...}``.

    Raises:
        DatasetError: a missing list (the message shows the expected layout) or a malformed line.
    """
    lists = {}
    for key in VTAB_LISTS:
        path = task_dir / f"{key}.txt"
        if not path.is_file():
            raise DatasetError(
                f"{display}: list file '{path}' is missing. Expected the VTAB-1k extracted layout "
                f"(NOAH's get_vtab1k.py / E2VPT / V-PETL Bench):\n" + _layout_text(task_dir.name)
            )
        lists[key] = read_vtab_list(path, task_dir, len(classnames), classnames)
    return lists


def _layout_text(folder: str) -> str:
    lines = ["    $DATA/", "      vtab-1k/", f"        {folder}/"] + [f"          {e}" for e in _LAYOUT]
    return "\n".join(lines)


def vtab_task_from_lists(
    name: str, task_dir: Path, classnames: list[str], template: str, extra: dict | None = None,
    display: str | None = None,
) -> Task:
    """A :class:`Task` from a folder holding the four VTAB-1k lists (also used by the tiny suite).

    ``train`` / ``val`` / ``test`` = train800 / val200 / test; ``extra["vtab_lists"]`` keeps all four
    lists for :func:`select_split`.
    """
    display = display or name
    lists = read_vtab_lists(task_dir, classnames, display)
    check_some_exist(lists, display, task_dir)
    # train800 is a random 800 of the training set: classes of a many-class task (SUN397) may be missing
    info = {"vtab_lists": lists, "vtab_group": vtab_group(name), "format": "vtab", "partial_train_classes": True,
            **(extra or {})}
    # VPT trains VTAB-1k without augmentation: the plain (resize + centre-crop) view, augment="none"
    return Task(name=name, classnames=list(classnames), template=template, train=list(lists["train800"]),
                val=list(lists["val200"]), test=list(lists["test"]), root=task_dir, image_dir=task_dir,
                augment="none", extra=info)


def find_vtab_task_dir(root: str | os.PathLike[str], folder: str) -> Path:
    """The task folder: ``root/<vtab-1k>/<folder>``, ``root/<folder>`` or ``root`` itself.

    Raises:
        DatasetError: none of them holds a VTAB-1k task; the message shows the expected layout.
    """
    base = abspath(root)
    for d in VTAB_DIRS:
        if (base / d / folder).is_dir():
            return base / d / folder
    if (base / folder / "train800.txt").is_file():  # $DATA/<task>/ (a same-named CoOp folder is skipped)
        return base / folder
    other_task = base.name in VTAB_BY_FOLDER and base.name != folder  # e.g. vtab-1k/dtd given for vtab/svhn
    if base.is_dir() and (base.name == folder or ((base / "train800.txt").is_file() and not other_task)):
        return base
    what = "does not exist" if not base.exists() else f"holds no 'vtab-1k/{folder}/' folder"
    raise DatasetError(
        f"VTAB-1k task '{folder}' not found: '{base}' {what}. Expected root to be the data directory "
        f"that contains 'vtab-1k/' (or that folder, or the task folder itself), laid out as:\n"
        + _layout_text(folder)
    )


def read_classnames_override(task_dir: Path, num_classes: int) -> list[str] | None:
    """Names from ``<task>/classnames.txt`` if present (one per line, label order), else None.

    Raises:
        DatasetError: the file does not hold exactly ``num_classes`` names.
    """
    path = task_dir / "classnames.txt"
    if not path.is_file():
        return None
    names = [pretty_classname(n) for n in read_text_lines(path)]
    if len(names) != num_classes:
        raise DatasetError(
            f"'{path}' holds {len(names)} class names; expected {num_classes} (one per line, in label order)"
        )
    return names


def load_vtab(folder: str, root: str | os.PathLike[str]) -> Task:
    """Load VTAB-1k task ``folder`` (e.g. ``"cifar"``) in full: train800 / val200 / test.

    Raises:
        DatasetError: missing folder or list, malformed line, label out of range, missing images.
    """
    spec = VTAB_BY_FOLDER[folder]
    tdir = find_vtab_task_dir(root, folder)
    override = read_classnames_override(tdir, spec.num_classes)
    names = override or list(spec.classnames)
    extra = {"classnames_source": "classnames.txt" if override else ("dataset" if spec.named else "generated"),
             "tfds": spec.tfds}
    return vtab_task_from_lists(spec.name, tdir, names, spec.template, extra, display=f"VTAB-1k {folder}")


def select_split(task: Task, split: str) -> Task:
    """The ``"tune"`` (train800 → val200) or ``"final"`` (train800val200 → test) view of a VTAB task, or the
    ``tune`` (train → val) / ``final`` (train → test) view of an FGVC task.

    Raises:
        ConfigError: an unknown split, or a dataset without protocol splits.

    Example:
        >>> t = select_split(load_vtab("dtd", "~/data"), "final")
        >>> len(t.train), len(t.val)
        (1000, 0)
    """
    if split not in VTAB_SPLITS:
        raise ConfigError(f"split={split!r} is invalid; expected one of {sorted(VTAB_SPLITS)}")
    lists = task.extra.get("vtab_lists")
    if lists is not None:
        train_key, eval_key = VTAB_SPLITS[split]
        train, test = list(lists[train_key]), list(lists[eval_key])
        val = list(lists["val200"]) if split == "tune" else []
    elif task.extra.get("format") == "fgvc-json":  # FGVC (VPT): choose on val, report test; train on train
        train = list(task.train)
        test = list(task.val) if split == "tune" else list(task.test)
        val = list(task.val) if split == "tune" else []
    else:
        raise ConfigError(
            f"dataset {task.name!r} has no protocol splits; split='tune'/'final' applies to vtab/* and fgvc/* "
            "datasets (and the tiny suite's VTAB-like tasks)"
        )
    return task.with_splits(train=train, val=val, test=test, extra={**task.extra, "split": split})


def _make_loader(spec: VtabSpec) -> Callable[[Path], Task]:
    def loader(root: Path) -> Task:
        return load_vtab(spec.folder, root)

    loader.__name__ = loader.__qualname__ = f"load_vtab_{spec.folder}"
    loader.__doc__ = (f"Load VTAB-1k {spec.folder} ({spec.group}, {spec.num_classes} classes) from "
                      f"``$DATA/vtab-1k/{spec.folder}/``.")
    return loader


for _spec in VTAB_TASKS:
    register_dataset(_spec.name, *(f"vtab/{a}" for a in _spec.aliases), f"vtab_{_spec.folder}")(_make_loader(_spec))
