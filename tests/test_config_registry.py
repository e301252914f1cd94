"""Config validation, overrides and the name registries: clear errors for user mistakes."""
import pytest

from selfkd import create_method, create_model
from selfkd.config import build_config, make_config
from selfkd.errors import ConfigError


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError) as err:
        build_config({"optim": {"lrr": 0.1}})
    assert "optim.lrr" in str(err.value) and "Did you mean 'lr'" in str(err.value)


def test_wrong_type_says_what_was_expected():
    with pytest.raises(ConfigError) as err:
        build_config({"train": {"epochs": "many"}})
    assert "train.epochs" in str(err.value) and "integer" in str(err.value)


def test_overrides_are_yaml_typed(tmp_path):
    cfg = make_config(None, {}, ["train.deterministic=False", "optim.lr=1e-4", "optim.nesterov=true",
                             "schedule.milestones=[3, 4]", "method.name=ls", "method.epsilon=0.2"])
    assert cfg.train.deterministic is False
    assert cfg.optim.lr == pytest.approx(1e-4)  # YAML reads 1e-4 as a string; pydantic converts it
    assert cfg.optim.nesterov is True
    assert cfg.schedule.milestones == [3, 4]
    assert cfg.method.options() == {"epsilon": 0.2}


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        make_config(None, {}, ["optim.lr"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        make_config(tmp_path / "nope.yaml")


def test_make_config_layers_recipe_flags_and_overrides(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: {name: frskd, alpha: 1.5}\nseed: 1\ntrain: {epochs: 7}\ndata: {batch_size: 64}\n")
    cfg = make_config(recipe, {"epochs": 3, "seed": None}, ["train.epochs=5"])  # --set wins over the flag
    assert (cfg.train.epochs, cfg.seed, cfg.data.batch_size, cfg.method.options()) == (5, 1, 64, {"alpha": 1.5})
    saved = cfg.to_dict()
    switched = make_config(saved, {"method": "ce"})  # a saved config as the recipe, another method
    assert switched.method.name == "ce" and switched.method.options() == {}
    assert "dropped its options alpha" in capsys.readouterr().err
    assert saved["method"] == {"name": "frskd", "alpha": 1.5}  # the given mapping is not changed
    make_config(saved, {"method": "ce"}, quiet=True)
    assert capsys.readouterr().err == ""


def test_auto_settings_are_resolved_once_for_the_device():
    cfg = build_config({"train": {"compile": "auto", "amp": "auto", "channels_last": "auto"}})
    cpu, gpu, ddp = cfg.resolved("cpu", False).train, cfg.resolved("cuda", False).train, cfg.resolved("cuda", True).train
    assert (cpu.amp, cpu.channels_last, cpu.compile) == ("off", False, "off")
    assert (gpu.amp, gpu.channels_last, gpu.compile) == ("bf16", True, "reduce-overhead")
    assert ddp.compile == "default"
    assert build_config({"train": {"compile": "off"}}).resolved("cuda", False).train.compile == "off"


def test_unknown_names_suggest_closest(tiny_resnet):
    with pytest.raises(ConfigError, match="Did you mean 'ls'"):
        create_method("lss", tiny_resnet())
    with pytest.raises(ConfigError, match="Did you mean 'cifar_resnet18'"):
        create_model("cifar_resnet81", num_classes=10)


def test_method_options_are_checked(tiny_resnet):
    with pytest.raises(ConfigError, match="Did you mean 'epsilon'"):
        create_method("ls", tiny_resnet(), epsilon_=0.1)
    with pytest.raises(ConfigError, match="ls_style"):
        create_method("ls", tiny_resnet(), ls_style="weird")
    method = create_method("ls", tiny_resnet(), epsilon="0.2")  # from a YAML/CLI string
    assert method.epsilon == pytest.approx(0.2)


def test_num_classes_must_match_model(tiny_resnet):
    with pytest.raises(ConfigError, match="num_classes"):
        create_method("ce", tiny_resnet(10), num_classes=100)


def test_run_name_placeholders():
    cfg = build_config({"name": "ce_lightskd_recipe_s{seed}", "seed": 3})
    assert cfg.run_name == "ce_lightskd_recipe_s3" and str(cfg.run_path) == "runs/ce_lightskd_recipe_s3"
    assert build_config({"method": {"name": "ls"}, "seed": 1}).run_name == "cifar100_cifar_resnet18_ls_s1"
    with pytest.raises(ConfigError, match="placeholder"):
        _ = build_config({"name": "run_{sed}"}).run_name
