"""Create methods by name: ``create_method("lightskd", model, num_classes=100, **hparams)``.

Each task (classification, segmentation) has its own registry, so a name such as ``frskd`` or ``ce`` can
exist in both; the model's ``task`` picks the registry.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import TASK_NAMES, Registry, checked_call

METHODS: dict[str, Registry] = {task: Registry("method", task) for task in TASK_NAMES}


def register_method(name: str, task: str = "classification"):
    """Class decorator: register the method ``name`` for ``task`` and set the class's ``task`` to it."""
    def add(cls):
        METHODS[task].register(name)(cls)
        cls.task = task
        return cls

    return add


def method_class(name: str, task: str = "classification"):
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
    return getattr(model, "task", "classification")


DATA_ARGS = ("num_samples", "ignore_index")  # constructor arguments a method takes from the dataset, not the user


def data_args(name: str, num_samples: int, task: str = "classification", ignore_index: int = 255) -> dict:
    """The arguments of :data:`DATA_ARGS` the method takes: ``num_samples`` for per-sample state (PS-KD's table), the
    training-set size; ``ignore_index`` for pixel-wise methods, the label of the dataset's unlabelled pixels."""
    import inspect

    params = inspect.signature(method_class(name, task).__init__).parameters
    given = {"num_samples": num_samples, "ignore_index": ignore_index}
    return {key: value for key, value in given.items() if key in params}


def list_methods(task: str = "classification") -> list[str]:
    return METHODS[task].names()
