"""Evaluation protocols of the papers: base-to-new, cross-dataset, domain generalisation, few-shot, data-efficient."""

from .base2new import base2new
from .data_efficient import data_efficient, select_subset
from .few_shot import few_shot
from .runs import RunSpec, evaluate_run, train_run
from .transfer import IMAGENET_SHIFTS, cross_dataset, domain_gen

__all__ = ["IMAGENET_SHIFTS", "RunSpec", "base2new", "cross_dataset", "data_efficient", "domain_gen", "evaluate_run",
           "few_shot", "select_subset", "train_run"]
