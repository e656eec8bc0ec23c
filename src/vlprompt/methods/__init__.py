"""Methods: one file each, registered by name. Importing this package registers them all.

Every module in this package except the shared ones (``base``, ``prompting``) is imported
here, so a new method is one new file with a ``@register_method`` class.
"""

import importlib
import pkgutil

from .base import (
    PromptMethod,
    build_method,
    get_method_class,
    list_methods,
    method_options,
    parse_method_options,
    reads_training_data,
    register_method,
    register_plugin,
)

_SHARED = {"base", "prompting"}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _SHARED and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["PromptMethod", "build_method", "get_method_class", "list_methods", "method_options", "parse_method_options",
           "reads_training_data", "register_method", "register_plugin"]
