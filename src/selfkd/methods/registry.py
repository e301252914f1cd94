"""Create methods by name: ``create_method("lightskd", model, num_classes=100, **hparams)``."""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry, checked_call

METHODS: Registry = Registry("method")
register_method = METHODS.register


def create_method(name: str, model, num_classes: int | None = None, **hparams):
    """Wrap ``model`` (a backbone, or a registered model name) in the named method.

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
    cls = METHODS.get(name)
    return checked_call(cls, "method", name, hparams, fixed=(model, num_classes))


def per_sample_args(name: str, num_samples: int) -> dict:
    """Methods that keep per-sample state (e.g. PS-KD's table) take ``num_samples``: supply it to them."""
    import inspect

    params = inspect.signature(METHODS.get(name).__init__).parameters
    return {"num_samples": num_samples} if "num_samples" in params else {}


def list_methods() -> list[str]:
    return METHODS.names()
