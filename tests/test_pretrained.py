"""Pretrained weights (issue #23): files in torchvision's, timm's, efficientnet_pytorch's and selfkd's layouts load
into the matching selfkd models with the source network's outputs, through torchvision's and timm's own caches (put
in place here: nothing downloads); what loading reports; the weights' preprocessing; fine-tuning (learning-rate
scale, frozen BatchNorm) through the engine, and an exact resume that never reads the weights again."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import load_file, save_file

from hand import CONFIGS, RESUMABLE, checkpoint_state, quick_config
from selfkd.config import make_config
from selfkd.data import load_dataset
from selfkd.data.settings import DataConfig, Preprocessing, resolve_data
from selfkd.engine import train
from selfkd.engine.step import build_optimizer
from selfkd.errors import ConfigError
from selfkd.methods import create_method
from selfkd.models import create_model
from selfkd.models.pretrained import Weights, load_pretrained, place
from selfkd.models.registry import MODEL_WEIGHTS

FIXTURES = Path(__file__).parent / "fixtures"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """torch's and Hugging Face's caches in the test's folder, and no network: a file that is not there fails."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)

    def no_download(url, *args, **kwargs):
        raise URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def scrambled(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``net`` in eval mode with random BatchNorm statistics, so that they matter to its outputs."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net.eval()


def cache_torchvision(root: Path, weights, state: dict) -> Path:
    """``state`` where torch.hub keeps torchvision's ``weights`` (``$TORCH_HOME/hub/checkpoints/<file of its URL>``)."""
    path = root / "torch" / "hub" / "checkpoints" / weights.url.rpartition("/")[2]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def resnet_stages(net, x: torch.Tensor) -> list[torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        out.append(x)
    return out


@torch.no_grad()
def test_torchvision_weights_from_torchs_cache_give_torchvisions_outputs(caches):
    torch.manual_seed(0)
    net = scrambled(tvm.resnet18())
    # torchvision's published resnet18 file predates BatchNorm's num_batches_tracked counters
    cache_torchvision(caches, tvm.ResNet18_Weights.IMAGENET1K_V1,
                      {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")})
    model = create_model("resnet18", num_classes=1000).eval()
    report = load_pretrained(model, "imagenet")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x)[0], net(x))
    assert (report.what, report.layout, len(report.loaded), report.total) == (
        "torchvision's ResNet18_Weights.IMAGENET1K_V1", "torchvision", 102, 102)
    assert report.skipped == {} and report.new == [] and report.adapted == {}
    assert report.preprocessing == Preprocessing(MEAN, STD, 224)

    grey = create_model("resnet18", num_classes=10, in_channels=1).eval()
    report = load_pretrained(grey, "IMAGENET1K_V1")  # a torchvision weights name
    g = torch.randn(2, 1, 64, 64)
    for got, want in zip(grey.features(g), resnet_stages(net, g.expand(-1, 3, -1, -1))):  # the grey image as RGB
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert report.skipped == {"1000 classes, this run has 10": ["fc.weight", "fc.bias"]}
    assert report.adapted == {"stem.0.weight": "3 input channels summed to 1, as timm's adapt_input_conv"}
    assert report.new == ["fc.weight", "fc.bias"]
    assert report.text().startswith(
        "Pretrained weights: loaded 100 of 102 tensors of resnet18 from torchvision's ResNet18_Weights.IMAGENET1K_V1 "
        "(torchvision layout); adapted stem.0.weight: 3 input channels summed to 1, as timm's adapt_input_conv; "
        "skipped fc.weight, fc.bias: 1000 classes, this run has 10; new (randomly initialised): 2 tensors of fc")


@torch.no_grad()
def test_segmenter_encoders_take_torchvisions_classifiers(caches):
    """frskd_seg_effb0 (torchvision style) and frskd_seg_resnet18 load their encoders from torchvision's ImageNet
    classifiers: each tap is the classifier's block output; the classifier's head is left out, the decoder is new."""
    torch.manual_seed(0)
    eff = scrambled(tvm.efficientnet_b0())
    cache_torchvision(caches, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, eff.state_dict())
    seg = create_model("frskd_seg_effb0", num_classes=21, encoder_style="torchvision").eval()
    report = load_pretrained(seg, "imagenet")
    x = torch.randn(2, 3, 64, 64)
    taps, h = {}, eff.features[0](x)
    for s in range(1, 8):
        for b, block in enumerate(eff.features[s]):
            h = taps[s, b] = block(h)
    for got, tap in zip(seg.encoder(x), seg.encoder.taps):
        assert torch.equal(got, taps[tap])
    assert list(report.skipped) == ["not part of frskd_seg_effb0"]
    assert all(k.startswith(("features.8.", "classifier.")) for k in report.skipped["not part of frskd_seg_effb0"])
    assert {k.split(".")[0] for k in report.new} == {"fpn", "bifpn", "head"}
    assert len(report.loaded) == sum(1 for k in seg.encoder.state_dict() if not k.endswith("num_batches_tracked"))
    assert report.preprocessing == Preprocessing(MEAN, STD, 224)

    res = scrambled(tvm.resnet18(), seed=1)
    cache_torchvision(caches, tvm.ResNet18_Weights.IMAGENET1K_V1, res.state_dict())
    seg = create_model("frskd_seg_resnet18", num_classes=21).eval()
    load_pretrained(seg, "imagenet")
    for got, want in zip(seg.encoder(x), resnet_stages(res, x)):
        assert torch.equal(got, want)


@torch.no_grad()
def test_efficientnet_pytorch_layout_loads_into_the_official_encoder(tmp_path, caches):
    """A file in efficientnet_pytorch's layout (the names and shapes of its EfficientNet-B0, recorded from the library
    in tests/fixtures, paired in order with a torchvision EfficientNet-B0's tensors: the same modules in the same
    order) gives the official-style encoder exactly the tensors, and so the outputs, of the same weights in
    torchvision's layout. That encoder is efficientnet_pytorch's network (tests/test_fidelity_frskd.py)."""
    layout = json.loads((FIXTURES / "efficientnet_pytorch_b0_keys.json").read_text())["keys"]
    torch.manual_seed(0)
    net = scrambled(tvm.efficientnet_b0())
    values = list(net.state_dict().values())
    assert [list(v.shape) for v in values] == [shape for _, shape in layout]
    torch.save({name: v for (name, _), v in zip(layout, values)}, tmp_path / "efficientnet-b0.pth")
    save_file(net.state_dict(), str(tmp_path / "torchvision-b0.safetensors"))
    official = create_model("frskd_seg_effb0", num_classes=21).eval()
    report = load_pretrained(official, str(tmp_path / "efficientnet-b0.pth"))
    reference = create_model("frskd_seg_effb0", num_classes=21).eval()
    load_pretrained(reference, str(tmp_path / "torchvision-b0.safetensors"))
    mine, theirs = official.encoder.state_dict(), reference.encoder.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(official.encoder(x), reference.encoder(x)):
        assert torch.equal(a, b)
    assert report.layout == "efficientnet_pytorch" and report.preprocessing is None
    assert len(report.skipped["not part of frskd_seg_effb0"]) == 8  # _conv_head, _bn1 (5), _fc (2)


@torch.no_grad()
def test_timm_tags_through_the_hugging_face_cache_and_timm_files(tmp_path, caches):
    """``timm:resnet18`` with ``imagenet`` reads timm's default weights (resnet18.a1_in1k) where timm's own loader
    finds them (the Hugging Face cache); a timm-layout file loads into timm:resnet18 and into selfkd's resnet18, whose
    network is the same."""
    import timm

    torch.manual_seed(0)
    net = scrambled(timm.create_model("resnet18"))
    repo = caches / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(net.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    model = create_model("timm:resnet18", num_classes=1000).eval()
    report = load_pretrained(model, "imagenet")
    assert torch.equal(model(x)[0], net(x))
    assert (report.what, report.layout) == ("timm's resnet18.a1_in1k", "timm")
    assert report.preprocessing == Preprocessing(MEAN, STD, 224)
    five = create_model("timm:resnet18", num_classes=5).eval()
    report = load_pretrained(five, "a1_in1k")
    assert report.skipped == {"1000 classes, this run has 5": ["model.fc.weight", "model.fc.bias"]}
    assert torch.equal(five.features(x)[-1], net.forward_intermediates(x, indices=[4], intermediates_only=True)[0])

    save_file(net.state_dict(), str(tmp_path / "timm-resnet18.safetensors"))
    for name in ("timm:resnet18", "resnet18"):
        model = create_model(name, num_classes=1000).eval()
        load_pretrained(model, str(tmp_path / "timm-resnet18.safetensors"))
        torch.testing.assert_close(model(x)[0], net(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"nosuch_in1k is neither a weights file \(no such path\) nor timm weights of "
                       r"resnet18 \(its tags are a1_in1k, a2_in1k"):
        load_pretrained(create_model("timm:resnet18", num_classes=5), "nosuch_in1k")


def _finished_run(tmp_path: Path, name: str, model: dict | None = None, data: dict | None = None) -> Path:
    """A one-epoch ce run on 16×16 synthetic images (4 classes), of ``model`` (default: cifar_resnet18 of width 8), with
    ``data`` settings added; returns its folder."""
    run = quick_config(tmp_path, "ce", epochs=1, run=name, train_size=64)
    run["model"] = model or run["model"]
    run["data"].update(data or {})
    train(run)
    return tmp_path / name


def test_a_selfkd_classification_run_starts_a_segmenters_encoder(tmp_path):
    """A selfkd run folder of resnet18 into frskd_seg_resnet18: they share torchvision's resnet18, so the encoder's
    levels are the classifier's stage outputs; its fc is left out, the decoder is new; its preprocessing comes along."""
    run = _finished_run(tmp_path, "resnet18", model={"name": "resnet18"})
    classifier = create_model("resnet18", num_classes=4)
    classifier.load_state_dict(load_file(str(run / "model.safetensors")))
    seg = create_model("frskd_seg_resnet18", num_classes=3).eval()
    report = load_pretrained(seg, str(run))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for got, want in zip(seg.encoder(x), classifier.eval().features(x)):
            assert torch.equal(got, want)
    assert report.what == str(run / "model.safetensors") and report.layout == "selfkd"
    assert report.skipped == {"not part of frskd_seg_resnet18": ["fc.bias", "fc.weight"]}
    assert report.preprocessing is not None and report.preprocessing.image_size == 16


def test_a_ce_run_starts_a_self_distillation_fine_tune(tmp_path, capsys):
    """A ce run's folder as model.pretrained of an frskd run with other classes, the pretrained parameters at lr × 0
    and their BatchNorm frozen: they end exactly as loaded (running statistics too), the new class layer and frskd's
    self-teacher train; the run prints the report and keeps it as pretrained.json. It normalises as the ce run did
    (its weights' preprocessing), and so does `selfkd eval --run` on it."""
    from selfkd.engine.evaluation import evaluate_run

    ce = _finished_run(tmp_path, "ce", data={"mean": [0.3, 0.4, 0.5], "std": [0.5, 0.6, 0.7]})
    cfg = quick_config(tmp_path, "frskd", epochs=1, run="frskd", train_size=64)
    cfg["data"]["options"]["num_classes"] = 5
    cfg["model"].update(pretrained=str(ce), freeze_bn=True)
    cfg["optim"]["pretrained_lr_scale"] = 0.0
    train(cfg)
    start, end = load_file(str(ce / "model.safetensors")), load_file(str(tmp_path / "frskd" / "model.safetensors"))
    kept = [k for k in start if not k.startswith("fc.")]
    assert all(torch.equal(start[k], end[k]) for k in kept)
    assert end["fc.weight"].shape == (5, 64)
    state = checkpoint_state(tmp_path / "frskd")
    moved = [k for k in state if not k.startswith("backbone.") and state[k].is_floating_point()]
    assert moved  # frskd's own modules exist and were trained from their initialisation
    report = json.loads((tmp_path / "frskd" / "pretrained.json").read_text())
    assert report["skipped"] == {"4 classes, this run has 5": ["fc.weight", "fc.bias"]}
    assert report["new"] == ["fc.weight", "fc.bias"] and report["source"] == str(ce)
    assert "Pretrained weights: loaded 100 of 102 tensors of cifar_resnet18 from" in capsys.readouterr().out
    data = torch.load(tmp_path / "frskd" / "last.pt", weights_only=True)["config"]["data"]
    assert (data["mean"], data["std"]) == ([0.3, 0.4, 0.5], [0.5, 0.6, 0.7])
    summary = json.loads((tmp_path / "frskd" / "summary.json").read_text())
    assert evaluate_run(tmp_path / "frskd", device="cpu")["top1"] == summary["final"]["top1"]


def test_resume_is_exact_and_never_reads_the_weights_again(tmp_path):
    """With the pretrained parameters at lr × 0.1 in groups of their own (no decay on norms and biases: 4 groups), a
    2-epoch run and a 1-epoch run resumed to 2 end with the same state, though the weights' folder is gone by then."""
    source = _finished_run(tmp_path, "source")
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    runs = {}
    for name, epochs in (("straight", 2), ("split", 1)):
        cfg = quick_config(tmp_path, "ce", epochs=epochs, run=name, schedule=RESUMABLE, train_size=64)
        cfg["model"]["pretrained"] = str(copy)
        cfg["optim"].update(pretrained_lr_scale=0.1, no_decay_norm_bias=True)
        train(cfg)
        runs[name] = cfg
    shutil.rmtree(copy)
    runs["split"]["train"]["epochs"] = 2
    train(runs["split"], resume=True)
    a, b = checkpoint_state(tmp_path / "straight"), checkpoint_state(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    groups = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [0, 0, 21, 41]  # all 62 parameters came from the file
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]


def test_pretrained_lr_scale_groups_and_frozen_norms(tiny_resnet):
    method = create_method("frskd", tiny_resnet(4))
    pretrained = frozenset(f"backbone.{name}" for name, _ in method.backbone.named_parameters())
    opt = build_optimizer(method, 0.1, 0.9, False, 5e-4, False, torch.device("cpu"), pretrained, 0.25)
    new, old = opt.param_groups
    assert (new["lr"], old["lr"]) == (0.1, 0.025)
    assert {id(p) for p in old["params"]} == {id(p) for p in method.backbone.parameters()}
    assert len(new["params"]) == len(list(method.parameters())) - len(old["params"]) > 0
    assert len(build_optimizer(method, 0.1, 0.9, False, 5e-4, False, torch.device("cpu")).param_groups) == 1

    method.freeze_norms(["stem.1", "stages.0.0.bn1"])
    method.train()  # what the trainer calls before each epoch
    assert not method.backbone.stem[1].training and not method.backbone.stages[0][0].bn1.training
    assert method.backbone.stages[0][0].bn2.training and method.backbone.training


def test_the_weights_preprocessing_comes_first_where_it_fits(tmp_path):
    """resolve_data: the weights' mean and std unless the config sets them or their channels differ; their crop for
    classification images read from files only."""
    from hand import write_image_folder

    weights = Preprocessing((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 200)
    cifar_like = load_dataset("synthetic", None, num_classes=4, train_size=8, test_size=4, image_size=16)
    data = resolve_data(DataConfig(dataset="synthetic"), cifar_like, weights)
    assert (data.mean, data.std, data.image_size) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 16)  # in memory: its size
    data = resolve_data(DataConfig(dataset="synthetic", mean=(0.5, 0.5, 0.5)), cifar_like, weights)
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.4, 0.5, 0.6)
    grey = load_dataset("synthetic", None, num_classes=4, train_size=8, test_size=4, image_size=16, channels=1)
    assert resolve_data(DataConfig(dataset="synthetic"), grey, weights).mean == grey.mean
    write_image_folder(tmp_path / "images")
    files = load_dataset("imagefolder", str(tmp_path / "images"))
    assert resolve_data(DataConfig(dataset="imagefolder"), files, weights).image_size == 200
    assert resolve_data(DataConfig(dataset="imagefolder", image_size=96), files, weights).image_size == 96
    scenes = load_dataset("synthetic_seg", None, train_size=4, test_size=2)
    assert resolve_data(DataConfig(dataset="synthetic_seg"), scenes, weights).image_size == scenes.image_size


def test_voc_recipe_starts_from_torchvisions_imagenet_weights(caches, run_cli):
    """`selfkd train -c configs/voc/frskd_effb0.yaml` reads torchvision's EfficientNet-B0 ImageNet weights from torch's
    cache (here a file built locally; with internet torchvision downloads it there) into the torchvision-style encoder.
    The recipe's data are swapped for tiny generated scenes."""
    torch.manual_seed(0)
    net = tvm.efficientnet_b0()
    cache_torchvision(caches, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, net.state_dict())
    cfg = make_config(CONFIGS / "voc" / "frskd_effb0.yaml")
    assert (cfg.model.pretrained, cfg.model.options()) == ("imagenet", {"encoder_style": "torchvision"})
    run = caches / "voc"
    code, out, err = run_cli("train", "-c", str(CONFIGS / "voc" / "frskd_effb0.yaml"), "--dataset", "synthetic_seg",
                             "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--run-dir", str(run),
                             "--set", "data.options={train_size: 8, test_size: 4, image_size: 32}",
                             "--set", "data.augment=seg_scale_crop_flip", "--set", "data.image_size=32",
                             "--set", "train.progress=false")
    assert code == 0, err
    report = json.loads((run / "pretrained.json").read_text())
    encoder = [k for k in create_model("frskd_seg_effb0", num_classes=4).encoder.state_dict()
               if not k.endswith("num_batches_tracked")]
    assert report["what"] == "torchvision's EfficientNet_B0_Weights.IMAGENET1K_V1"
    assert report["loaded"] == [f"encoder.{k}" for k in encoder]
    assert f"Pretrained weights: loaded {len(encoder)} of" in out


@pytest.mark.parametrize("folder, images", [("cub200", 5994), ("stanford_dogs", 12000), ("mit67", 5360)])
def test_fine_grained_fine_tuning_recipes(folder, images):
    """FRSKD from torchvision's ImageNet ResNet-18 with the Transfer-Learning-Library's fine-tuning recipe: 10,000
    steps of 48 images, ×0.1 after 60 % of them, the pretrained part at 0.1 × lr; the method builds from its options."""
    cfg = make_config(CONFIGS / folder / "frskd_resnet18_pretrained.yaml")
    o, d = cfg.optim, cfg.data
    assert (cfg.model.name, cfg.model.pretrained, d.dataset) == ("resnet18", "imagenet", folder)
    assert (o.lr, o.momentum, o.nesterov, o.weight_decay, o.pretrained_lr_scale, d.batch_size) == (
        0.01, 0.9, True, 5e-4, 0.1, 48)
    assert abs(cfg.train.epochs * images / 48 - 10_000) < 60
    assert cfg.schedule.milestones == [round(cfg.train.epochs * 0.6)]
    assert (d.augment, d.image_size, d.test_resize) == ("rrc_flip", 224, 256)
    create_method("frskd", create_model("resnet18", num_classes=7), **cfg.method.options())


DECLARED = [(name, network) for name, networks in sorted(MODEL_WEIGHTS.items()) for network in networks]


@pytest.mark.parametrize("name, network", DECLARED, ids=[f"{n}-{w.arch}" for n, w in DECLARED])
def test_every_declared_network_has_a_place_for_each_tensor(name, network, caches):
    """Each torchvision network a model declares (built on the meta device, as its published weights hold it: the
    segmentation networks with their auxiliary head) fits it: every tensor lands on a model tensor of its shape (the
    class layer aside) or in a part the model leaves out, and covers what it should."""
    import inspect

    from torchvision.models import get_model, get_model_builder

    options = {"weights_backbone": None, "aux_loss": True}
    options = {k: v for k, v in options.items() if k in inspect.signature(get_model_builder(network.arch)).parameters}
    with torch.device("meta"):
        net = get_model(network.arch, weights=None, **options)
        model = create_model(name, num_classes=7)
    _, placed = place(Weights(net.state_dict(), "torchvision", network.arch), model)
    own = model.state_dict()
    assert placed.unplaced == [] and placed.covered == set(placed.tensors)
    differ = {k: v.shape for k, v in placed.tensors.items() if v.shape != own[k].shape}
    assert all(own[k].shape[0] == 7 and shape[1:] == own[k].shape[1:] for k, shape in differ.items())  # class layers
