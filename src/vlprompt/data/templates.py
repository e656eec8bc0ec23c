"""Hand-crafted zero-shot prompt templates (reference: CoOp ``trainers/zsclip.py``).

``TEMPLATES`` maps each canonical dataset name to its single template (``{}`` = class name).
``IMAGENET_SELECT_TEMPLATES`` are the 7 templates of CLIP's "select" prompt ensemble; the ensemble
for a dataset is these 7 plus the dataset's own template, except for ImageNet itself (as the reference
does; its variants V2/Sketch/A/R do get ``"a photo of a {}."`` appended).

Example:
    >>> get_template("dtd")
    '{} texture.'
    >>> len(ensemble_templates("eurosat"))
    8
"""

from __future__ import annotations

DEFAULT_TEMPLATE = "a photo of a {}."

TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": DEFAULT_TEMPLATE,
    "imagenetv2": DEFAULT_TEMPLATE,
    "imagenet_sketch": DEFAULT_TEMPLATE,
    "imagenet_a": DEFAULT_TEMPLATE,
    "imagenet_r": DEFAULT_TEMPLATE,
}

#: KgCoOp uses a different DTD template for its text targets.
KGCOOP_DTD_TEMPLATE = "a photo of a {}, a type of texture."

#: CLIP's 7 "select" ImageNet templates (ZeroshotCLIP2 prompt ensemble).
IMAGENET_SELECT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def get_template(name: str) -> str:
    """The hand-crafted template of a canonical dataset name (``"a photo of a {}."`` if unknown)."""
    return TEMPLATES.get(name, DEFAULT_TEMPLATE)


def ensemble_templates(name: str, template: str | None = None) -> list[str]:
    """The ZeroshotCLIP2 ensemble: the 7 select templates plus the dataset's template (not for ``imagenet``).

    Args:
        name: canonical dataset name.
        template: the dataset's template, if it differs from ``TEMPLATES`` (e.g. a custom dataset).
    """
    templates = list(IMAGENET_SELECT_TEMPLATES)
    if name == "imagenet":
        return templates
    own = template if template is not None else get_template(name)
    if own not in templates:
        templates.append(own)
    return templates
