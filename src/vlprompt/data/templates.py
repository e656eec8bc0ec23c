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


#: The 60 hand-crafted templates whose mean frozen text feature is PromptSRC's text target (textual diversity):
#: CLIP's ImageNet prompt-engineering list as PromptSRC ships it (``trainers/imagenet_templates.py``), in its order.
PROMPTSRC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
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
