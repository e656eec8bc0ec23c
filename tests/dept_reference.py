"""DePT's training loss written out independently of vlprompt.methods.dept, for the tests of every
``<method>+dept`` (DePT, Zhang et al. CVPR 2024; Koorye/DePT ``trainers/elevater.py``-style CAT head).

``L = (1 − λ) · CE(ITM logits, y) + λ · CE([head(FiLM_t(t_y)); head(FiLM_i(f))], [y; y])``: the class text
feature of each label and the image feature, each through its own FiLM (``x · γ + β``), then one shared
linear head over the base classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def film(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """FiLM by hand: ``x · γ + β`` with the layer's parameters."""
    return x * layer.gamma + layer.beta


def dept_loss(model: torch.nn.Module, itm_logits: torch.Tensor, image_features: torch.Tensor,
              text_features: torch.Tensor, labels: torch.Tensor, weight: float) -> torch.Tensor:
    """The DePT loss of a ``+dept`` model: ``itm_logits`` of the inner method, the (raw) image features and
    class text features the CAT head sees, the labels and DePT's λ (``dept_weight``)."""
    w, b = model.head.weight, model.head.bias
    z_txt = film(text_features[labels], model.film_text) @ w.t() + b
    z_img = film(image_features, model.film_img) @ w.t() + b
    cat_ce = F.cross_entropy(torch.cat([z_txt, z_img]), torch.cat([labels, labels]))
    return (1 - weight) * F.cross_entropy(itm_logits, labels) + weight * cat_ce
