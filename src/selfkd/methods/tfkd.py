"""Teacher-free KD: a hand-designed virtual teacher (:class:`TFKDRegularization`) or a pretrained teacher of the
student's own architecture (:class:`TFKDSelf`).

The official code uses ``nn.KLDivLoss()`` with ``reduction="mean"`` (division by B·K) and compensates
with a multiplier m; every weight here is expressed in the batchmean convention instead, so
``(α·m/K)`` becomes one explicit weight and a different K does not silently rescale the loss (to match
the official code at another K, set the weight to α·m/K).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError, SelfKDError
from ..losses import compute_dtype, cross_entropy, kd_loss, kd_prob_loss, smoothed_targets, soft_cross_entropy, upcast
from ..models.pretrained import load_pretrained
from ..registry import Fraction, NonNegative, Positive, Range
from ..weights import save_weights
from .base import Method, MethodOutput
from .registry import register_method


@register_method("tfkd_reg")
class TFKDRegularization(Method):
    """TF-KD with the manually designed teacher: Yuan, Tay, Li, Wang, Feng, "Revisiting Knowledge Distillation
    via Label Smoothing Regularization", CVPR 2020 (arXiv: "Revisit Knowledge Distillation: a Teacher-free
    Framework"). The default is the official ``loss_kd_regularization``.

    Virtual teacher ``u = a·1_y + (1−a)/(K−1)·(1−1_y)`` (a = ``correct_prob``), target ``q = σ(u/τ)``
    — the softmax of a *probability* vector divided by τ = 20, hence nearly uniform; reproduced as is::

        L = ce_weight·CE(z, y) + reg_weight·KL_bm(q ‖ σ(z))        defaults 0.9 and 0.1 (= α·m/K for K = 100)

    with ``KL_bm`` summed over classes and averaged over the batch; a = 0.99, τ = 20 (the weights are the
    official α = 0.1, m = 100). Options: ``student_temperature=True`` — the paper's written form, KL
    against ``σ(z/τ)`` (no τ²). ``compat="selfkdlib"`` — Self-KD-Lib's ``TF_KD_self_reg``:
    ``CE(z, y) + (1/τ)·SCE(z/τ, q_ls)`` with ``q_ls`` the label-smoothing target ``0.9·1_y + 0.1/(K−1)·(1−1_y)``;
    there ``ce_weight``/``reg_weight`` default to 1 and 1/τ. Leaving a weight out picks the default of the
    chosen form.
    """

    search_space = {"correct_prob": Range(0.8, 0.99), "temperature": Range(1.0, 40.0)}

    def __init__(self, model, num_classes, *, ce_weight: NonNegative | None = None,
                 reg_weight: NonNegative | None = None, correct_prob: Fraction = 0.99, temperature: Positive = 20.0,
                 student_temperature: bool = False, compat: Literal["official", "selfkdlib"] = "official"):
        super().__init__(model, num_classes)
        if compat == "selfkdlib" and student_temperature:
            raise ConfigError("tfkd_reg: compat='selfkdlib' already scales the student by the temperature; "
                              "drop student_temperature=True (it selects the paper's form of the official loss).")
        selfkdlib = compat == "selfkdlib"
        self.ce_weight = (1.0 if selfkdlib else 0.9) if ce_weight is None else ce_weight
        self.reg_weight = (1.0 / temperature if selfkdlib else 0.1) if reg_weight is None else reg_weight
        self.correct_prob, self.temperature = correct_prob, temperature
        self.student_temperature, self.compat = student_temperature, compat

    def teacher_probs(self, targets: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``q = σ(u/τ)`` for the virtual teacher ``u`` (official form; not used by compat='selfkdlib')."""
        u = smoothed_targets(targets, self.num_classes, 1.0 - self.correct_prob, dtype=dtype)
        return F.softmax(u / self.temperature, dim=1)

    def compute_loss(self, images, targets, index=None):
        logits, _ = self.backbone(images)
        t = self.temperature
        if self.compat == "selfkdlib":
            reg = soft_cross_entropy(upcast(logits) / t, smoothed_targets(targets, self.num_classes, 0.1,
                                                                        dtype=compute_dtype(logits)))
        else:
            student = upcast(logits) / t if self.student_temperature else logits
            reg = kd_prob_loss(self.teacher_probs(targets, compute_dtype(logits)), student)
        losses = {"ce": self.ce_weight * cross_entropy(logits, targets), "reg": self.reg_weight * reg}
        return MethodOutput(logits, losses["ce"] + losses["reg"], losses)


@register_method("tfkd_self")
class TFKDSelf(Method):
    """TF-KD with a pretrained teacher of the student's own architecture: Yuan, Tay, Li, Wang, Feng,
    "Revisiting Knowledge Distillation via Label Smoothing Regularization", CVPR 2020. The loss is the
    official ``loss_kd_self``::

        L = ce_weight·CE(z, y) + kd_weight·KD_T(z_teacher, z)      T = 6

    with ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(t_b/T) ‖ σ(s_b/T))`` and defaults 0.05 = 1−α and 0.475 = α·m/K
    (α = 0.95, m = 50, K = 100), the official ResNet-18 setting.

    ``teacher_weights`` is the trained network of the student's architecture and class count: normally the
    ``model.safetensors`` (or the folder) of an earlier selfkd run of the same model (plain CE), or a torchvision or
    timm file of that network; it is read by the loader of ``model.pretrained``
    (:func:`selfkd.models.pretrained.load_pretrained`), which here keeps the class layer and first conv exact. The
    teacher is frozen, always in eval mode (BN running statistics), run
    under ``no_grad``, kept out of the optimizer, DDP gradient sync and :meth:`eval_model`. It is part of
    ``state_dict``, so checkpoints are self-contained.

    Reference code: it runs the teacher with autograd on, building a graph for nothing (memory only; the
    same numbers).
    """

    search_space = {"kd_weight": Range(0.05, 5.0, log=True), "temperature": Range(1.0, 8.0)}

    def __init__(self, model, num_classes, *, teacher_weights: str | None = None, ce_weight: NonNegative = 0.05,
                 kd_weight: NonNegative = 0.475, temperature: Positive = 6.0):
        super().__init__(model, num_classes)
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.teacher = self._load_teacher(model, teacher_weights)

    @classmethod
    def example_options(cls, model, folder: Path) -> dict:
        """A stand-in teacher for tests and benchmarks: ``model``'s own (untrained) weights, written to ``folder``."""
        path = Path(folder) / "teacher.safetensors"
        save_weights(path, model, {"model": model.name, "num_classes": model.num_classes})
        return {"teacher_weights": str(path)}

    @staticmethod
    def _load_teacher(model, path: str | None):
        if not path:
            raise ConfigError(
                "tfkd_self needs teacher_weights: the model.safetensors of a finished selfkd run of the same model "
                f"({model.name}) and class count, e.g. --set method.teacher_weights=runs/<CE run>/model.safetensors."
            )
        teacher = copy.deepcopy(model)
        try:
            load_pretrained(teacher, path, exact=True)
        except SelfKDError as err:
            raise type(err)(f"tfkd_self cannot use its teacher: {err} TF-KD-self needs a trained network of the "
                            "student's architecture (the same model, options and class count): normally the "
                            "model.safetensors of a finished selfkd run, plain CE.") from None
        return teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def compute_loss(self, images, targets, index=None):
        logits, _ = self.backbone(images)
        with torch.no_grad():
            teacher_logits, _ = self.teacher(images)
        losses = {
            "ce": self.ce_weight * cross_entropy(logits, targets),
            "kd": self.kd_weight * kd_loss(teacher_logits, logits, self.temperature),
        }
        return MethodOutput(logits, losses["ce"] + losses["kd"], losses)
