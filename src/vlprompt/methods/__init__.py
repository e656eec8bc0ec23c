"""Methods: one file each, registered by name. Importing this package registers them all."""

from . import coop, linear_probe, zeroshot  # noqa: F401  (registration)
from .base import PromptMethod, build_method, get_method_class, list_methods, register_method, register_plugin

__all__ = ["PromptMethod", "build_method", "get_method_class", "list_methods", "register_method", "register_plugin"]
