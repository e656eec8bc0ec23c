"""Evaluation protocols of the papers: base-to-new, cross-dataset, domain generalisation, few-shot, multi-task,
VTAB-1k/FGVC, data-efficient."""

from .base2new import base2new
from .data_efficient import data_efficient, select_subset
from .few_shot import few_shot
from .multitask import multitask
from .runs import RunSpec, evaluate_run, train_run
from .transfer import IMAGENET_SHIFTS, cross_dataset, domain_gen
from .vtab import summarize_vtab, vtab

__all__ = ["IMAGENET_SHIFTS", "RunSpec", "base2new", "cross_dataset", "data_efficient", "domain_gen", "evaluate_run",
           "few_shot", "multitask", "select_subset", "summarize_vtab", "train_run", "vtab"]
