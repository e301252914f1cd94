"""Create methods by name: ``create_method("lightskd", model, num_classes=100, **hparams)``.

Each task (classification, segmentation) has its own registry, so a name such as ``frskd`` or ``ce`` can
exist in both; the model's ``task`` picks the registry.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry, checked_call
from ..tasks import DEFAULT_TASK, TASK_NAMES

METHODS: dict[str, Registry] = {task: Registry("method", task) for task in TASK_NAMES}


def register_method(name: str, task: str = DEFAULT_TASK):
    """Class decorator: register the method ``name`` for ``task`` and set the class's ``task`` to it."""
    def add(cls):
        METHODS[task].register(name)(cls)
        cls.task = task
        return cls

    return add


def method_class(name: str, task: str = DEFAULT_TASK):
    return METHODS[task].get(name)


def create_method(name: str, model, num_classes: int | None = None, **hparams):
    """Wrap ``model`` (a backbone or segmenter, or a registered model name) in the named method of the model's task.

    ``hparams`` are the method's keyword arguments; unknown names and wrong types are refused.
    """
    from ..models import create_model

    if isinstance(model, str):
        if num_classes is None:
            raise ConfigError("create_method needs num_classes when the model is given by name.")
        model = create_model(model, num_classes=num_classes)
    if num_classes is None:
        num_classes = model.num_classes
    if num_classes != model.num_classes:
        raise ConfigError(
            f"num_classes={num_classes} but the model's classifier has {model.num_classes} outputs; "
            "create the model with the same number of classes."
        )
    cls = method_class(name, model_task(model))
    return checked_call(cls, "method", name, hparams, fixed=(model, num_classes))


def model_task(model) -> str:
    return getattr(model, "task", DEFAULT_TASK)


DATA_ARGS = ("num_samples",)  # constructor arguments a method takes from the dataset, not the user


def data_args(name: str, num_samples: int, task: str = DEFAULT_TASK) -> dict:
    """The arguments of :data:`DATA_ARGS` the method takes: ``num_samples`` for per-sample state (PS-KD's table), the
    training-set size."""
    import inspect

    params = inspect.signature(method_class(name, task).__init__).parameters
    return {"num_samples": num_samples} if "num_samples" in params else {}


def list_methods(task: str = DEFAULT_TASK) -> list[str]:
    return METHODS[task].names()
