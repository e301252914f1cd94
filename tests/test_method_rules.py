"""Rules every registered method (of both tasks) keeps, checked on each one: its loss is the sum of its named terms, a copy restored
from its state (with its optimizer's) continues exactly as the original, and options outside their limits are
refused with a message that names the option, the limit, the value and the default, and its default search space
(selfkd tune's) lies within those limits and around its defaults. Each method with a Self-KD-Lib recipe loads and
builds from it, and one epoch of the methods listed at the end beats chance."""
import copy
import re

import pytest
import torch

from conftest import own_methods
from hand import assert_one_epoch_learns, assert_selfkdlib_recipe
from selfkd import create_model
from selfkd.config import DataConfig
from selfkd.data import build_train_loader, load_dataset
from selfkd.errors import ConfigError
from selfkd.methods import create_method, data_args, method_class

CLASSES = 4
METHODS = [pytest.param(task, name, id=f"{task}-{name}") for task in ("classification", "segmentation")
           for name in own_methods(task)]
ALL_TERMS_ON = {("segmentation", "frskd"): {"warmup_epochs": 0}}  # its KD and AT start after 40 epochs by default


def _model(task):
    """A ResNet-18 of width 4, or a segmenter on ResNet-18 with 8-channel pyramids."""
    if task == "segmentation":
        return create_model("frskd_seg_resnet18", num_classes=CLASSES, channels=8, head_channels=8)
    return create_model("cifar_resnet18", num_classes=CLASSES, width=4)


def _build(task, name, folder, seed=0):
    """The method on a tiny model, with whatever options it cannot be built without."""
    torch.manual_seed(seed)
    model = _model(task)
    options = {**method_class(name, task).example_options(model, folder), **ALL_TERMS_ON.get((task, name), {})}
    return create_method(name, model, **options, **data_args(name, 32, task)).train()


def _batch(task, method):
    """One batch of 8 samples (16×16 images, 32×32 scenes) in the layout the method's ``data_needs`` declares
    (views, same-class partners, dataset indices), served by the data pipeline."""
    if task == "segmentation":
        splits = load_dataset("synthetic_seg", num_classes=CLASSES, train_size=32, test_size=8, image_size=32)
    else:
        splits = load_dataset("synthetic", num_classes=CLASSES, train_size=32, test_size=8, image_size=16)
    loader = build_train_loader(splits, DataConfig(dataset="bench", batch_size=8), method.data_needs,
                                torch.device("cpu"))
    loader.set_epoch(0)
    batch = next(iter(loader))
    return batch.images, batch.targets, batch.index if method.data_needs.index else None


def _sgd(method):
    return torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                           weight_decay=5e-4)


def _step(method, optimizer, batch, seed):
    torch.manual_seed(seed)  # the same random draws (mixup, CutMix) wherever this step is repeated
    optimizer.zero_grad()
    out = method(*batch)
    out.loss.backward()
    optimizer.step()
    return out


@pytest.mark.parametrize("task, name", METHODS)
def test_loss_is_the_sum_of_its_terms_and_a_restored_copy_continues_exactly(task, name, tmp_path):
    """Two training steps; after the first, the loss equals the sum of the named terms (the state-carrying terms
    of DSR and DLB are active then). The method's and the optimizer's state restored into a fresh pair (built from
    other weights), one more step on the same batch in both: every loss term and the new weights are equal."""
    method = _build(task, name, tmp_path)
    batch, optimizer = _batch(task, method), _sgd(method)
    method.on_epoch_start(1, 3)  # past epoch 0: PS-KD reads its table, ONE's ramp is on
    _step(method, optimizer, batch, 1)
    out = _step(method, optimizer, batch, 2)
    assert out.losses and all(v.ndim == 0 and torch.isfinite(v) for v in out.losses.values())
    torch.testing.assert_close(out.loss, sum(out.losses.values()), rtol=1e-6, atol=1e-7)

    restored = _build(task, name, tmp_path, seed=1)  # on_epoch_start is not called again, as in a mid-epoch resume
    restored.load_state_dict(copy.deepcopy(method.state_dict()))  # copies, as a checkpoint file holds
    restored_optimizer = _sgd(restored)
    restored_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    original, resumed = _step(method, optimizer, batch, 3), _step(restored, restored_optimizer, batch, 3)
    assert original.losses.keys() == resumed.losses.keys()
    for key in original.losses:
        assert torch.equal(original.losses[key], resumed.losses[key]), key
    assert torch.equal(original.loss, resumed.loss)
    after = restored.state_dict()
    for key, value in method.state_dict().items():
        assert torch.equal(after[key], value), key


# (method, option, value outside its limits, other options it needs): every range the methods check
OUT_OF_RANGE = [
    ("drg", "alpha", -1.0, {}), ("drg", "temperature", 0.0, {}), ("dsr", "beta", -1.0, {}),
    ("dsr", "temperature", 0.0, {}), ("lightskd", "alpha", -0.2, {}), ("lightskd", "beta", -1.0, {}),
    ("lightskd", "temperature", 0.0, {}),
    ("frskd", "alpha", -1.0, {}), ("frskd", "beta", -1.0, {}), ("frskd", "temperature", 0.0, {}),
    ("frskd", "sla_weight", -1.0, {"sla": True}), ("frskd", "width", 0, {}),
    ("frskd", "channels", 0, {"teacher": "bifpn"}), ("frskd", "mix_alpha", 0.0, {"mix": "mixup"}),
    ("ls", "epsilon", 1.5, {}),
    ("cskd", "temperature", 0.0, {}), ("cskd", "kd_weight", -1.0, {}),
    ("tfkd_reg", "correct_prob", 1.2, {}), ("tfkd_reg", "temperature", 0.0, {}), ("tfkd_reg", "ce_weight", -1.0, {}),
    ("tfkd_reg", "reg_weight", -0.1, {}),
    ("tfkd_self", "temperature", 0.0, {}), ("tfkd_self", "ce_weight", -1.0, {}), ("tfkd_self", "kd_weight", -1.0, {}),
    ("pskd", "alpha_T", 1.5, {"num_samples": 4}), ("pskd", "num_samples", 0, {}),
    ("byot", "temperature", 0.0, {}), ("byot", "ce_weight", -1.0, {}), ("byot", "kd_weight", -1.0, {}),
    ("byot", "feature_weight", -1.0, {}), ("byot", "bottleneck_width", 0, {}),
    ("ddgsd", "temperature", -4.0, {}), ("ddgsd", "kd_weight", -1.0, {}), ("ddgsd", "mmd_weight", -1.0, {}),
    ("dlb", "temperature", 0.0, {}), ("dlb", "kd_weight", -1.0, {}),
    ("sla_sd", "temperature", 0.0, {}),
    ("one", "temperature", 0.0, {}), ("one", "num_branches", 1, {}), ("one", "rampup_epochs", -1, {}),
    ("sad", "weight", -1.0, {}), ("sad", "start_epoch", -1, {}),
    ("dks", "temperature", 0.0, {}),
    ("bake", "omega", 1.0, {}), ("bake", "omega", -0.5, {}), ("bake", "temperature", 0.0, {}),
    ("bake", "weight", -1.0, {}), ("bake", "partners", 0, {}),
    ("mixskd", "temperature", 0.0, {}), ("mixskd", "alpha", 0.0, {}),
    ("zipf_ls", "weight", -1.0, {}), ("zipf_ls", "power", 0.0, {}),
    ("uskd", "alpha", -1.0, {}), ("uskd", "beta", -1.0, {}), ("uskd", "mu", -1.0, {}),
]
SEGMENTATION_OUT_OF_RANGE = [
    ("frskd", "alpha", -1.0, {}), ("frskd", "beta", -1.0, {}), ("frskd", "temperature", 0.0, {}),
    ("frskd", "warmup_epochs", -1, {}), ("frskd", "ramp_epochs", -2, {}),
]


@pytest.mark.parametrize("task, name", METHODS)
def test_the_default_search_space_is_within_the_limits_and_holds_the_defaults(task, name, tmp_path):
    """selfkd tune checks the declared space as it checks --space (an option of the method, a range of a number within
    its limits); each default of a searched option lies in its range, and a method with options to weigh has one."""
    import inspect

    from selfkd.config import make_config
    from selfkd.registry import Choice, Range
    from selfkd.tune.space import method_space

    cls = method_class(name, task)
    if not cls.search_space:
        assert name == "ce"  # nothing to search but what --space adds (the optimizer's keys)
        return
    checked = method_space(cls, name, make_config({}), {}, {})
    assert checked.keys() == {f"method.{k}" for k in cls.search_space}
    defaults = inspect.signature(cls.__init__).parameters
    for option, where in cls.search_space.items():
        default = defaults[option].default
        if isinstance(where, Range) and default is not None:  # None: chosen from other options
            assert where.low <= default <= where.high and where.low < where.high, option
        if isinstance(where, Choice):
            assert default in where.values, option
    for end in ("low", "high"):  # the method builds at both ends of every range
        options = {k: getattr(w, end) for k, w in cls.search_space.items() if isinstance(w, Range)}
        torch.manual_seed(0)
        model = _model(task)
        create_method(name, model, **cls.example_options(model, tmp_path), **options, **data_args(name, 32, task))


@pytest.mark.parametrize("task, name, option, value, others",
                         [("classification", *row) for row in OUT_OF_RANGE]
                         + [("segmentation", *row) for row in SEGMENTATION_OUT_OF_RANGE])
def test_options_outside_their_limits_are_refused(task, name, option, value, others):
    with pytest.raises(ConfigError, match=rf"Bad option for method '{name}': '{option}' must be .*"
                                          rf"\(got {re.escape(repr(value))}\)"):
        create_method(name, _model(task), **{option: value}, **others)


def test_the_message_names_the_option_the_limit_the_value_and_the_default(tiny_resnet):
    with pytest.raises(ConfigError) as err:
        create_method("lightskd", tiny_resnet(), temperature=-1)
    assert str(err.value) == ("Bad option for method 'lightskd': 'temperature' must be greater than 0 (got -1); "
                              "the default is 4.0.")
    with pytest.raises(ConfigError, match=r"'alpha_T' must be less than or equal to 1 \(got '1.5'\)"):
        create_method("pskd", tiny_resnet(), num_samples=4, alpha_T="1.5")  # a YAML/CLI string is converted first


@pytest.mark.parametrize("name", ["ce", "ls", "bake", "byot", "cskd", "ddgsd", "dks", "dlb", "one", "pskd", "sad",
                                  "sla_sd", "uskd", "zipf_ls"])
def test_selfkdlib_recipe_loads_and_builds(name, tiny_resnet):
    assert_selfkdlib_recipe(name, tiny_resnet)


@pytest.mark.parametrize("name", ["bake", "dks", "mixskd", "one", "sad", "uskd", "zipf_ls"])
def test_one_epoch_run_learns(name, tmp_path):
    assert_one_epoch_learns(tmp_path, name)
