"""vlprompt: prompt tuning of frozen vision-language models and ViTs.

Example:
    >>> import vlprompt as vp
    >>> bb = vp.load_backbone("tiny-clip")
    >>> task = vp.load_dataset("imagefolder", "data/shapes", shots=16, seed=1)
    >>> model = vp.build_method("coop", bb, task.classnames, n_ctx=16)
    >>> result = vp.fit(model, task, epochs=10, lr=0.0035, batch_size=4)
    >>> vp.save_prompt(model, "run/prompt.safetensors")
"""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    TrainConfig,
    build_method,
    evaluate,
    evaluate_per_task,
    fit,
    load_backbone,
    load_dataset,
    load_prompt,
    load_task_group,
    predict,
    save_prompt,
    seed_everything,
    task_structure,
)
from .errors import CheckpointError, ConfigError, DatasetError, VlpromptError  # noqa: E402

__all__ = [
    "CheckpointError", "ConfigError", "DatasetError", "TrainConfig", "VlpromptError", "__version__",
    "build_method", "evaluate", "fit", "load_backbone", "load_dataset", "load_prompt", "predict",
    "save_prompt", "seed_everything", "load_task_group", "task_structure", "evaluate_per_task",
]
