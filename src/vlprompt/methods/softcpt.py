"""SoftCPT: soft context sharing for multi-task prompt tuning (Ding et al., Neurocomputing 2024).

T tasks are tuned jointly. Task ``t`` has a task name and ``C_t`` classes; the model's class list is
the concatenation of all tasks' class lists (global labels, see :mod:`vlprompt.data.multitask`).
The CoOp context of task ``t`` is not a free parameter but the output of a task-shared meta network:

1. task feature ``z_t = g([SOS][U]_1..[U]_M <task name>. [EOT])`` through the frozen text tower
   ``g`` (EOT feature after the text projection, not normalised); ``U`` is one set of M = 4 learned
   vectors shared by all tasks (``task_csc=False``, "TA") or one set per task ("TS");
2. class-aware variants also encode ``h_c = g([SOS][V]_1..[V]_K <class>. [EOT])`` (``V``: K = 4 vectors
   shared by all classes, "CA", or per class, "CS") and use the input ``u_c = [h_c ; z_t(c)]``;
   the others ("NA") use ``u_t = z_t``;
3. sub-network ``lin``: ``ctx = reshape(u · W, [L, D_w])`` with ``W ∈ R^{D_in × L·D_w}`` (bias-free,
   N(0, 0.02²) init), L = 16; ``linmean`` uses ``(h_c + z_t)/2`` and ``lincls`` ``h_c`` alone
   (class-aware only);
4. class prompt ``[SOS] ctx <class>. [EOT]``, ``w_c = g(·)``, logits ``exp(τ)·cos(f(x), w_c)``.

The loss is the paper's summed multi-task loss
``L = (1/B) Σ_t Σ_{i: task(i)=t} CE(logits_i[classes of t], y_i)``: each sample's softmax runs over
its own task's classes only. Optional class sampling (``cls_sample_rate``, the reference's
``CLS_SAMPLE_RATE``) encodes, per task present in the batch, every positive class plus a random
``ceil(rate · #negatives)`` of the others, and the CE runs over those.

Registered names: ``softcpt`` (all options, defaults = NATA) and the paper's variants
``softcpt-nata``, ``softcpt-nats``, ``softcpt-cata``, ``softcpt-csta``, ``softcpt-cats``,
``softcpt-csts`` (letters 1–2: NA no class input / CA shared class context / CS class-specific
class context; letters 3–4: TA task context shared by all tasks / TS per task), and the paper's
hard-sharing baseline ``coop-mt`` (CoOp contexts shared by all tasks, per task or per class,
trained jointly with the same loss).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import PromptMethod, register_method
from .prompting import ClassPosition, ClassPrompts, check_text_tokens, init_context

PGType = Literal["lin", "linmean", "lincls"]
TaskList = tuple[tuple[str, int], ...]


def normalize_tasks(tasks: Any) -> TaskList:
    """``tasks`` as a tuple of ``(task_name, num_classes)`` pairs (JSON gives lists)."""
    try:
        out = tuple((str(name), int(n)) for name, n in tasks)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tasks must be a list of (task_name, num_classes) pairs, got {tasks!r}") from exc
    if any(n < 1 for _, n in out):
        raise ConfigError(f"every task needs at least one class, got {out!r}")
    return out


@dataclass(frozen=True)
class SoftCPTConfig:
    """SoftCPT options (defaults: the paper's SoftCPT-NATA, ``configs/trainers/MTCoOp/rn50_ep50.yaml``).

    Attributes:
        n_ctx: L, number of generated context tokens per class prompt (``N_CTX`` = 16).
        task_n_ctx: M, learned task-context tokens in the task prompt (``TASK_N_CTX`` = 4; 0 = none).
        task_csc: one task context per task ("TS") instead of one shared by all tasks ("TA").
        class_aware: feed the class feature ``h_c`` to the meta network (reference ``CSC``), so the
            context is generated per class rather than per task.
        class_n_ctx: K, learned class-context tokens of class-aware variants (``CLASS_N_CTX`` = 4; 0 = none).
        class_csc: one class context per class ("CS") instead of one shared by all classes ("CA").
        pg_type: meta sub-network: ``lin`` (paper), ``linmean`` or ``lincls`` (class-aware only).
        cls_sample_rate: training-time class sampling rate (0 = encode every class; the reference's
            General-10 class-aware runs use 0.1).
        class_token_position: where the class name goes in the class prompt (``end``, ``middle``, ``front``).
        task_ctx_init, class_ctx_init: init phrases for the task / class contexts ("" = N(0, 0.02²)).
        tasks: ``((task_name, num_classes), ...)`` in class-list order; ``()`` = one task holding all
            classes, named ``task_name``.
        task_name: the task name of a single-task model (``tasks=()``).
        share_prefix: run the text tower on each shared ``[SOS][ctx]`` once and only the class tokens per
            class (see CoOp's ``share_prefix``): per task for the class prompts of task-level variants
            (NA: every class of a task has its task's generated context), and once for the task prompts
            (TA) and the class-name prompts (CA) of the meta network. The same features to fp32
            rounding; class-specific contexts (class-aware variants' class prompts, CS class features),
            a class position other than ``end`` or a non-causal text tower use the full path;
            False forces the full path everywhere.
    """

    n_ctx: int = 16
    task_n_ctx: int = 4
    task_csc: bool = False
    class_aware: bool = False
    class_n_ctx: int = 4
    class_csc: bool = False
    pg_type: PGType = "lin"
    cls_sample_rate: float = 0.0
    class_token_position: ClassPosition = "end"
    task_ctx_init: str = ""
    class_ctx_init: str = ""
    tasks: TaskList = ()
    task_name: str = "image classification"
    share_prefix: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", normalize_tasks(self.tasks))
        if self.n_ctx < 1 or self.task_n_ctx < 0 or self.class_n_ctx < 0:
            raise ConfigError(f"softcpt: n_ctx must be >= 1 and task_n_ctx, class_n_ctx >= 0 (got {self.n_ctx}, "
                              f"{self.task_n_ctx}, {self.class_n_ctx})")
        if self.pg_type not in ("lin", "linmean", "lincls"):
            raise ConfigError(f"softcpt: pg_type must be lin, linmean or lincls, got {self.pg_type!r}")
        if self.pg_type != "lin" and not self.class_aware:
            raise ConfigError(f"softcpt: pg_type={self.pg_type!r} combines class and task features and needs "
                              "class_aware=True")
        if not 0.0 <= self.cls_sample_rate <= 1.0:
            raise ConfigError(f"softcpt: cls_sample_rate must be in [0, 1], got {self.cls_sample_rate}")


def own_task_mask(labels: torch.Tensor, class_task: torch.Tensor) -> torch.Tensor:
    """``(B, n_cls)`` bool: class ``c`` belongs to the task of sample ``i`` (global labels)."""
    return class_task.unsqueeze(0) == class_task[labels].unsqueeze(1)


def multitask_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, class_task: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The summed multi-task loss ``(1/B) Σ_t Σ_{i∈t} CE(logits_i[classes of t (kept)], y_i)``.

    ``keep`` (``(n_cls,)`` bool) restricts each task's softmax further (class sampling).
    """
    mask = own_task_mask(labels, class_task)
    if keep is not None:
        mask = mask & keep.unsqueeze(0)
    return F.cross_entropy(logits.float().masked_fill(~mask, float("-inf")), labels)


def sample_classes(
    labels: torch.Tensor, class_task: torch.Tensor, rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classes to encode in a class-sampled step: ``(n_cls,)`` bool.

    For every task with a sample in the batch: all its positive classes plus a random
    ``ceil(rate · #negatives)`` of its other classes. Tasks absent from the batch are skipped (their
    classes do not enter the loss).
    """
    keep = torch.zeros(class_task.shape[0], dtype=torch.bool, device=class_task.device)
    keep[labels] = True
    for t in class_task[labels].unique().tolist():
        neg = torch.nonzero((class_task == t) & ~keep).flatten()
        k = math.ceil(rate * len(neg))
        if k:
            perm = torch.randperm(len(neg), generator=generator)[:k].to(neg.device)
            keep[neg[perm]] = True
    return keep


def _assemble_rows(prompts: ClassPrompts, ctx: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Prompt embeddings of some rows of ``prompts`` (all when ``rows`` is None); ``ctx`` is per row."""
    if rows is None:
        return prompts.assemble(ctx)
    prefix, suffix = prompts.token_prefix[rows], prompts.token_suffix[rows]
    x = torch.cat([prefix.to(ctx.dtype), ctx, suffix.to(ctx.dtype)], dim=1)
    if prompts.position == "end":
        return x
    order = prompts.order[rows]
    return torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _learned_context(backbone: Backbone, n: int, count: int | None, init: str) -> tuple[nn.Parameter | None, int]:
    """``(param, n_tokens)``: one ``(n, W)`` context, or ``count`` independent ones ``(count, n, W)``."""
    if n == 0 and not init:
        return None, 0
    if init:
        ctx = init_context(backbone, n, init)
        if count is not None:
            ctx = ctx.unsqueeze(0).repeat(count, 1, 1)
    else:
        check_text_tokens(backbone, n)
        shape = (n, backbone.text_width) if count is None else (count, n, backbone.text_width)
        ctx = torch.randn(*shape) * 0.02
    return nn.Parameter(ctx.to(backbone.device)), ctx.shape[-2]


class MultiTaskPromptMethod(PromptMethod):
    """Shared machinery of the multi-task prompt methods (SoftCPT and the hard-sharing CoOp baseline).

    Subclasses set ``self.prompts`` (one :class:`ClassPrompts` over all classes) in :meth:`_build`
    and implement :meth:`class_contexts`; this class holds the task split (``tasks``, the
    ``class_task`` buffer), re-targeting, text encoding (optionally of some rows) and the summed
    multi-task loss with optional class sampling (config field ``cls_sample_rate``).
    """

    n_ctx: int

    def _resolve_tasks(self, classnames: list[str], tasks: TaskList) -> TaskList:
        tasks = tasks or ((self.config.task_name, len(classnames)),)
        total = sum(n for _, n in tasks)
        if total != len(classnames):
            raise ConfigError(f"{self.name}: tasks {list(tasks)} hold {total} classes but {len(classnames)} class "
                              "names were given")
        return tasks

    def _build(self, tasks: TaskList, classnames: list[str]) -> None:
        self.tasks = tasks
        self.n_tasks = len(tasks)
        self.prompts = ClassPrompts(self.backbone, classnames, self.n_ctx, self.config.ctx_init or None,
                                    self.config.class_token_position)
        owner = torch.repeat_interleave(torch.arange(len(tasks)), torch.tensor([n for _, n in tasks]))
        self.register_buffer("class_task", owner.to(self.prompts.eot_idx.device), persistent=False)

    def _check_retarget(self, tasks: TaskList, classnames: list[str]) -> None:
        """Raise :class:`ConfigError` when the learned weights cannot serve ``tasks`` / ``classnames``."""

    def set_classnames(self, classnames: list[str], tasks: Any = None) -> None:
        """Re-target to other classes (and task names): ``tasks`` as in the config.

        Without ``tasks`` a single-task model takes all ``classnames``; a multi-task model keeps its
        task split when the class count is unchanged. Task-specific contexts need the same number
        of tasks, class-specific contexts the same number of classes.
        """
        if tasks is None:
            if self.n_tasks == 1:
                tasks = ((self.tasks[0][0], len(classnames)),)
            elif len(classnames) == len(self.classnames):
                tasks = self.tasks
            else:
                raise ConfigError(f"{self.name}: a multi-task model re-targeted to {len(classnames)} classes needs "
                                  "tasks=[(task_name, num_classes), ...]")
        tasks = self._resolve_tasks(classnames, normalize_tasks(tasks))
        self._check_retarget(tasks, classnames)
        super().set_classnames(classnames)
        if self.config.tasks or len(tasks) > 1:
            self.config = dataclasses.replace(self.config, tasks=tasks)
        self._build(tasks, classnames)

    def class_contexts(self) -> torch.Tensor:
        """The context of every class prompt: ``(n_cls, L, D_w)`` (or ``(L, D_w)`` when unified)."""
        raise NotImplementedError

    def contexts_by_group(self) -> bool:
        """Whether every class takes its context from a group (one for all, or one per task)."""
        return False

    def group_contexts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(contexts (G, L, D_w), group of each class (n_cls,))`` when :meth:`contexts_by_group`."""
        raise NotImplementedError

    def shares_prefix(self) -> bool:
        """Whether the class prompts go through the shared-prefix path (see ``share_prefix``): contexts
        shared by groups, the class at the end, a causal text tower."""
        return (self.config.share_prefix and self.contexts_by_group() and self.prompts.position == "end"
                and getattr(self.backbone, "supports_prefix_sharing", False))

    def _shared_text_features(self, rows: torch.Tensor | None) -> torch.Tensor:
        """:meth:`raw_text_features` in one shared-prefix pass: each class continues its group's prefix."""
        ctx, group = self.group_contexts()
        prefix, suffix = self.prompts.shared_parts(ctx)
        eot = self.prompts.eot_idx
        if rows is not None:
            suffix, eot, group = suffix[rows], eot[rows], group[rows]
        return self.backbone.encode_text_shared(prefix, suffix, eot, groups=group)

    def raw_text_features(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Class text features ``(n_cls, D)`` (or of ``rows`` only)."""
        if self.shares_prefix():
            return self._shared_text_features(rows)
        ctx = self.class_contexts()
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(len(self.classnames), -1, -1)
        if rows is not None:
            ctx = ctx[rows]
        eot = self.prompts.eot_idx if rows is None else self.prompts.eot_idx[rows]
        return self.backbone.encode_text(_assemble_rows(self.prompts, ctx, rows), eot)

    def train_outputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """As :meth:`PromptMethod.train_outputs`, plus ``class_mask`` ``(B, n_cls)``: the classes in each
        sample's label space (its own task, sampled classes only). ``logits`` are ``-inf`` elsewhere."""
        image = self.image_features_of(batch)
        y = batch["labels"]
        keep = None
        rate = getattr(self.config, "cls_sample_rate", 0.0)
        if rate > 0 and self.training:
            keep = sample_classes(y, self.class_task, rate)
            rows = torch.nonzero(keep).flatten()
            sub = self.raw_text_features(rows)
            text = sub.new_zeros(len(self.classnames), sub.shape[-1]).index_copy(0, rows, sub)
        else:
            text = self.raw_text_features()
        mask = own_task_mask(y, self.class_task)
        if keep is not None:
            mask = mask & keep.unsqueeze(0)
        logits = self.logits_from_features(image, F.normalize(text.float(), dim=-1))
        logits = logits.float().masked_fill(~mask, float("-inf"))
        ce = F.cross_entropy(logits, y)
        return {"image": image, "text": text, "logits": logits, "ce": ce, "loss": ce, "class_mask": mask}


@register_method
class SoftCPT(MultiTaskPromptMethod):
    """SoftCPT, multi-task prompt tuning with a meta network (every option; defaults = NATA).

    Example:
        >>> group = vp.load_dataset("tiny-group/synthetic", None, shots=16, seed=1)
        >>> model = vp.build_method("softcpt-nata", bb, group.classnames, tasks=task_structure(group))
        >>> vp.fit(model, group, epochs=50, lr=0.002, batch_size=32)["per_task"]
    """

    name = "softcpt"
    Config = SoftCPTConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: SoftCPTConfig) -> None:
        super().__init__(backbone, classnames, config)
        tasks = self._resolve_tasks(classnames, config.tasks)
        self.n_ctx = config.n_ctx
        self.task_ctx, self.task_n_ctx = _learned_context(
            backbone, config.task_n_ctx, len(tasks) if config.task_csc else None, config.task_ctx_init)
        self.class_ctx, self.class_n_ctx = None, 0
        if config.class_aware:
            self.class_ctx, self.class_n_ctx = _learned_context(
                backbone, config.class_n_ctx, len(classnames) if config.class_csc else None, config.class_ctx_init)
        d = backbone.embed_dim
        in_dim = 2 * d if config.class_aware and config.pg_type == "lin" else d
        check_text_tokens(backbone, config.n_ctx)
        self.proj = nn.Parameter((torch.randn(in_dim, config.n_ctx * backbone.text_width) * 0.02).to(backbone.device))
        self._build(tasks, classnames)

    def _build(self, tasks: TaskList, classnames: list[str]) -> None:
        bb = self.backbone
        self.tasks = tasks
        self.n_tasks = len(tasks)
        self.task_prompts = ClassPrompts(bb, [t for t, _ in tasks], self.task_n_ctx, self.config.task_ctx_init or None)
        if self.config.class_aware:
            self.class_prompts = ClassPrompts(bb, classnames, self.class_n_ctx, self.config.class_ctx_init or None)
        self.prompts = ClassPrompts(bb, classnames, self.n_ctx, None, self.config.class_token_position)
        owner = torch.repeat_interleave(torch.arange(len(tasks)), torch.tensor([n for _, n in tasks]))
        self.register_buffer("class_task", owner.to(self.prompts.eot_idx.device), persistent=False)

    def _check_retarget(self, tasks: TaskList, classnames: list[str]) -> None:
        if self.config.task_csc and len(tasks) != self.n_tasks:
            raise ConfigError(f"{self.name} with task-specific task context (task_csc) learned {self.n_tasks} task "
                              f"contexts and cannot be re-targeted to {len(tasks)} tasks")
        if self.config.class_aware and self.config.class_csc and len(classnames) != len(self.classnames):
            raise ConfigError(f"{self.name} with class-specific class context (class_csc) learned "
                              f"{len(self.classnames)} class contexts and cannot be re-targeted to "
                              f"{len(classnames)} other classes")

    # ---------------------------------------------------------------- meta network
    def _encode(self, prompts: ClassPrompts, ctx: torch.Tensor | None) -> torch.Tensor:
        if ctx is None:  # no learned tokens: the plain "<name>." prompts
            prefix = prompts.token_prefix
            ctx = prefix.new_zeros(prefix.shape[0], 0, prefix.shape[-1])
        elif (ctx.dim() == 2 and self.config.share_prefix and prompts.position == "end"
              and getattr(self.backbone, "supports_prefix_sharing", False)):  # one context for every row
            prefix, suffix = prompts.shared_parts(ctx)
            return self.backbone.encode_text_shared(prefix, suffix, prompts.eot_idx)[0]
        return self.backbone.encode_text(prompts.assemble(ctx), prompts.eot_idx)

    def task_features(self) -> torch.Tensor:
        """Task features ``z_t`` ``(T, D)``: the task prompts through the frozen text tower."""
        return self._encode(self.task_prompts, self.task_ctx)

    def class_features(self) -> torch.Tensor:
        """Class features ``h_c`` ``(n_cls, D)`` of class-aware variants."""
        return self._encode(self.class_prompts, self.class_ctx)

    def meta_input(self) -> torch.Tensor:
        """Meta-network input: ``z_t`` ``(T, D)``, or ``[h_c ; z_t(c)]`` ``(n_cls, 2D)`` when class-aware."""
        z = self.task_features()
        if not self.config.class_aware:
            return z
        return torch.cat([self.class_features(), z[self.class_task]], dim=-1)

    def generated_context(self) -> torch.Tensor:
        """The meta network's output: ``(T, L, D_w)`` per task, or ``(n_cls, L, D_w)`` when class-aware."""
        x = self.meta_input()
        d = self.backbone.embed_dim
        if self.config.pg_type == "linmean":
            x = (x[:, :d] + x[:, d:]) / 2
        elif self.config.pg_type == "lincls":
            x = x[:, :d]
        ctx = x @ self.proj.to(x.dtype)
        return ctx.reshape(x.shape[0], self.n_ctx, self.backbone.text_width)

    def class_contexts(self) -> torch.Tensor:
        """The context of every class prompt ``(n_cls, L, D_w)``."""
        ctx = self.generated_context()
        return ctx if self.config.class_aware else ctx[self.class_task]

    def contexts_by_group(self) -> bool:
        return not self.config.class_aware  # NA: one generated context per task

    def group_contexts(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.generated_context(), self.class_task


@dataclass(frozen=True)
class NATAConfig(SoftCPTConfig):
    """SoftCPT-NATA: no class input, one task context shared by all tasks (the paper's headline)."""


@dataclass(frozen=True)
class NATSConfig(SoftCPTConfig):
    """SoftCPT-NATS: no class input, one task context per task."""

    task_csc: bool = True


@dataclass(frozen=True)
class CATAConfig(SoftCPTConfig):
    """SoftCPT-CATA: class-aware with one class context for all classes; shared task context."""

    class_aware: bool = True


@dataclass(frozen=True)
class CSTAConfig(SoftCPTConfig):
    """SoftCPT-CSTA: class-aware with a class context per class; shared task context."""

    class_aware: bool = True
    class_csc: bool = True


@dataclass(frozen=True)
class CATSConfig(SoftCPTConfig):
    """SoftCPT-CATS: class-aware with one class context for all classes; a task context per task."""

    class_aware: bool = True
    task_csc: bool = True


@dataclass(frozen=True)
class CSTSConfig(SoftCPTConfig):
    """SoftCPT-CSTS: class-aware with a class context per class; a task context per task."""

    class_aware: bool = True
    class_csc: bool = True
    task_csc: bool = True


@register_method
class SoftCPTNATA(SoftCPT):
    """SoftCPT-NATA: contexts per task from the task name; task context shared by all tasks (paper headline)."""

    name = "softcpt-nata"
    Config = NATAConfig


@register_method
class SoftCPTNATS(SoftCPT):
    """SoftCPT-NATS: contexts per task from the task name; one task context per task."""

    name = "softcpt-nats"
    Config = NATSConfig


@register_method
class SoftCPTCATA(SoftCPT):
    """SoftCPT-CATA: contexts per class from [class; task] features; shared class and task contexts."""

    name = "softcpt-cata"
    Config = CATAConfig


@register_method
class SoftCPTCSTA(SoftCPT):
    """SoftCPT-CSTA: contexts per class from [class; task] features; class context per class, shared task context."""

    name = "softcpt-csta"
    Config = CSTAConfig


@register_method
class SoftCPTCATS(SoftCPT):
    """SoftCPT-CATS: contexts per class from [class; task] features; shared class context, task context per task."""

    name = "softcpt-cats"
    Config = CATSConfig


@register_method
class SoftCPTCSTS(SoftCPT):
    """SoftCPT-CSTS: contexts per class from [class; task] features; class context per class, task context per task."""

    name = "softcpt-csts"
    Config = CSTSConfig


# ------------------------------------------------------------------ hard-sharing baseline
@dataclass(frozen=True)
class CoOpMTConfig:
    """Hard-sharing CoOp baselines of the SoftCPT paper (``trainers/mtcoop_hard.py``), trained jointly.

    Attributes:
        n_ctx: context tokens (16).
        ctx_init: init phrase ("" = N(0, 0.02²), independent per context).
        csc: one context per class ("CoOp-CS" trained jointly).
        task_csc: one context per task (reference ``TSC``); with both off, one context for all classes
            of all tasks ("CoOp-MT").
        class_token_position: ``end``, ``middle`` or ``front``.
        tasks, task_name: the task split, as :class:`SoftCPTConfig`.
        share_prefix: run ``[SOS][ctx]`` once per shared context (once, or once per task with
            ``task_csc``) and only the class tokens per class (see CoOp's ``share_prefix``): the same
            features to fp32 rounding. ``csc``, a class position other than ``end`` or a non-causal
            text tower use the full path; False forces it.
    """

    n_ctx: int = 16
    ctx_init: str = ""
    csc: bool = False
    task_csc: bool = False
    class_token_position: ClassPosition = "end"
    tasks: TaskList = ()
    task_name: str = "image classification"
    share_prefix: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", normalize_tasks(self.tasks))


@register_method
class CoOpMT(MultiTaskPromptMethod):
    """CoOp-MT: CoOp contexts hard-shared across a task group (SoftCPT baselines), summed multi-task loss.

    ``task_csc=True`` learns one context per task (jointly), ``csc=True`` one per class.

    Example:
        >>> model = vp.build_method("coop-mt", bb, group.classnames, tasks=task_structure(group))
    """

    name = "coop-mt"
    Config = CoOpMTConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoOpMTConfig) -> None:
        super().__init__(backbone, classnames, config)
        tasks = self._resolve_tasks(classnames, config.tasks)
        count = len(classnames) if config.csc else len(tasks) if config.task_csc else None
        self.ctx, self.n_ctx = _learned_context(backbone, config.n_ctx, count, config.ctx_init)
        if self.ctx is None:
            raise ConfigError("coop-mt needs n_ctx >= 1 or an init phrase")
        self._build(tasks, classnames)

    def _check_retarget(self, tasks: TaskList, classnames: list[str]) -> None:
        if self.config.csc and len(classnames) != len(self.classnames):
            raise ConfigError(f"{self.name} with class-specific context (csc) learned {len(self.classnames)} "
                              f"contexts and cannot be re-targeted to {len(classnames)} other classes")
        if self.config.task_csc and not self.config.csc and len(tasks) != self.n_tasks:
            raise ConfigError(f"{self.name} with one context per task (task_csc) learned {self.n_tasks} contexts "
                              f"and cannot be re-targeted to {len(tasks)} tasks")

    def class_contexts(self) -> torch.Tensor:
        if self.config.csc or not self.config.task_csc:
            return self.ctx
        return self.ctx[self.class_task]

    def contexts_by_group(self) -> bool:
        return not self.config.csc

    def group_contexts(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.task_csc:
            return self.ctx, self.class_task
        return self.ctx.unsqueeze(0), torch.zeros_like(self.class_task)
