"""Composing configs: precedence, training-config files, errors, and every shipped option."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mitorch import ConfigError, build
from mitorch.cli._common import UsageError, parse_command_line
from mitorch.config import compose, format_value, group_options
from mitorch.config.validate import DETECTORS


def test_group_defaults_then_config_file_then_command_line(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"name": "resnet", "depth": 34},
        "optimizer": {"name": "adamw", "lr": 0.005},
        "batch_size": 12,
        "max_epochs": 7,
    }))
    monkeypatch.chdir(tmp_path)
    command = parse_command_line([str(config), "batch_size=20", "optimizer.weight_decay=0.2"], "mitrain")
    cfg = compose(command.overrides)
    assert cfg.model.depth == 34                      # CONFIG over the group default (18)
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.optimizer.lr == 0.005                  # CONFIG over adamw's default
    assert cfg.optimizer.weight_decay == 0.2          # command line over adamw's default
    assert cfg.batch_size == 20                       # command line over CONFIG
    assert cfg.max_epochs == 7                        # CONFIG over train.yaml
    assert cfg.lr_scheduler._target_.endswith("cosine")  # untouched group default


def test_command_line_group_choice_drops_the_file_section_for_another_option(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  name: resnet\n  depth: 50\noptimizer:\n  lr: 0.3\n")
    command = parse_command_line([str(config), "model=mobilenet_v3", "optimizer=adam"], "mitrain")
    cfg = compose(command.overrides)
    assert cfg.model.size == "large" and "depth" not in cfg.model
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.3


@pytest.mark.parametrize("overrides", [["logger.mlflow.tags={team: vision, stage: 2}"],
                                       ["logger.mlflow.tags.team=vision", "+logger.mlflow.tags.stage=2"],
                                       ["CONFIG"]])
def test_mlflow_tags_are_set_in_any_form(overrides: list[str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("logger:\n  mlflow:\n    tags: {team: vision, stage: 2}\n")
    argv = [str(config) if o == "CONFIG" else o for o in overrides]
    command = parse_command_line([*argv[:1], "logger=[mlflow]", *argv[1:]], "mitrain")
    assert OmegaConf.to_container(compose(command.overrides).logger.mlflow.tags) == {"team": "vision", "stage": 2}
    with pytest.raises(ConfigError, match="unknown key 'logger.mlflow.tagz.team'"):
        compose(["logger=[mlflow]", "logger.mlflow.tagz.team=vision"])
    # A group with no option chosen is not an open mapping: it is chosen, and takes no keys.
    assert not compose(["logger=[mlflow]", "logger=none"]).logger and not compose(["logger=[none]"]).logger
    for unknown in ("logger.typo=1", "logger.mlflow.tags.team=vision"):
        with pytest.raises(ConfigError, match=f"unknown key '{unknown.split('=')[0]}'"):
            compose([unknown])


def test_legacy_positionals_and_flags_are_overrides(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text("{}")
    command = parse_command_line(["c.json", "tr.txt", "va.txt", "-w", "w.pt", "-o", "sub/out.pt", "-d",
                                  "data.val=other.txt"], "mitrain")
    cfg = compose(command.overrides)
    assert cfg.data.train == str(tmp_path / "tr.txt")
    assert cfg.data.val == "other.txt"  # the later, explicit override wins
    assert cfg.weights == str(tmp_path / "w.pt")
    assert cfg.output == str(tmp_path / "sub" / "out.pt")
    assert cfg.fast_dev_run is True


@pytest.mark.parametrize("argv, message", [
    (["a.json", "b.txt"], "expected CONFIG or CONFIG TRAIN VAL"),
    (["-w"], "-w needs a path"),
    (["--bogus"], "unknown option --bogus"),
])
def test_malformed_command_lines(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_command_line(argv, "mitrain")


@pytest.mark.parametrize("overrides, message", [
    (["model=resnt"], "unknown model 'resnt'; choose from convnext_tiny, efficientnet, fasterrcnn, fcos, mobilenet_v3, resnet, retinanet, ssdlite, timm, vit_b_16"),
    (["optimizer=lamb"], "unknown optimizer 'lamb'; choose from adam, adamw, rmsprop, sgd"),
    (["model.foo=1"], "unknown key 'model.foo'; valid keys at 'model': depth"),
    (["batch_sise=3"], "unknown key 'batch_sise'; valid keys at the top level: accumulate_grad_batches"),
    (["batch_size=abc"], "batch_size must be an integer, got 'abc'"),
    (["optimizer.lr=fast"], "optimizer.lr must be a number, got 'fast'"),
    (["amp=3"], "amp must be true or false, got 3"),
    (["task_type=regression"], "unknown task_type 'regression'"),
    (["batch_size=0"], "batch_size must be at least 1"),
    (["data.train=a.txt"], "set both data.train and data.val"),
])
def test_config_mistakes_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_broken_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"name": "resnet",}}')
    with pytest.raises(ConfigError, match="is not valid JSON"):
        parse_command_line([str(bad)], "mitrain")
    with pytest.raises(ConfigError, match="config file not found"):
        parse_command_line([str(tmp_path / "missing.yaml")], "mitrain")


@pytest.mark.parametrize("value", ["plain", "with space", "it's", "back\\slash", "end\\", "a=b,c", 3, 2.5, True,
                                   None, [1, "x y"], {"k": [1, 2]}])
def test_override_values_round_trip(value) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"key={format_value(value)}"])[0]
    assert parsed.value() == value


def test_disallowed_target_is_refused() -> None:
    cfg = compose(["model._target_=os.system"])
    with pytest.raises(ConfigError, match=r"model._target_ 'os.system' is not allowed"):
        build.check_targets(cfg)
    build.check_targets(compose(["model._target_=os.system", "allowed_targets=[os.]"]))


# Every option of every group builds and does its job on a tiny input.
CLASSIFIERS = [o for o in group_options("model") if o not in DETECTORS]  # detectors: tests/test_detection.py
CLASSIFICATION_AUGMENTATIONS = [o for o in group_options("augmentation") if not o.startswith("detection")]


@pytest.mark.parametrize("option", CLASSIFIERS)
def test_every_model_option_builds(option: str) -> None:
    cfg = compose([f"model={option}", "image_size=32"])
    model = build.build_model(cfg, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("option", group_options("optimizer"))
def test_every_optimizer_option_builds_without_decay_on_biases_and_norms(option: str) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build.build_optimizer(compose([f"optimizer={option}"]), model)
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [model[0].weight.shape]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3  # conv bias, bn weight, bn bias


@pytest.mark.parametrize("option", group_options("lr_scheduler"))
def test_every_scheduler_option_steps_per_update(option: str) -> None:
    extra = ["lr_scheduler.step_epochs=1"] if option == "step" else []
    cfg = compose([f"lr_scheduler={option}", "lr_scheduler.warmup_epochs=1.0", "optimizer.lr=1.0", *extra])
    model = torch.nn.Linear(2, 2)
    optimizer = build.build_optimizer(cfg, model)
    scheduler = build.build_scheduler(cfg, optimizer, steps_per_epoch=4, max_epochs=3)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[3] <= 1.0           # warms up over the first epoch's 4 updates
    assert lrs[:4] == sorted(lrs[:4])
    if option != "constant":
        assert lrs[-1] < lrs[4]              # decays over the remaining updates


def test_cosine_reaches_min_ratio_at_the_last_update() -> None:
    cfg = compose(["lr_scheduler.min_lr_ratio=0.1", "optimizer.lr=1.0"])
    optimizer = build.build_optimizer(cfg, torch.nn.Linear(2, 2))
    scheduler = build.build_scheduler(cfg, optimizer, steps_per_epoch=5, max_epochs=2)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("option", CLASSIFICATION_AUGMENTATIONS)
def test_every_augmentation_option_builds_both_pipelines(option: str) -> None:
    cfg = compose([f"augmentation={option}", "image_size=32"])
    train, val = build.build_transforms(cfg)
    image = torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8)
    for pipeline in (train, val):
        out = pipeline(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_augmentation_variants_change_only_the_policy() -> None:
    standard = compose(["augmentation=standard"]).augmentation
    trivial = compose(["augmentation=trivialaugment"]).augmentation
    assert trivial.train.auto_augment == "trivialaugment" and standard.train.auto_augment is None
    assert OmegaConf.to_container(trivial.val) == OmegaConf.to_container(standard.val)
    # The default is mild (half the image or more, no flip); ImageNet's recipe is one override away.
    assert compose([]).augmentation == standard and (standard.train.min_scale, standard.train.hflip_prob) == (0.5, 0)
    imagenet = compose(["augmentation=imagenet"]).augmentation
    assert (imagenet.train.min_scale, imagenet.train.hflip_prob) == (0.08, 0.5)


@pytest.mark.parametrize("sample", sorted((Path(__file__).parents[1] / "samples").glob("train_config.*")))
def test_shipped_sample_configs_compose(sample: Path) -> None:
    cfg = compose(parse_command_line([str(sample)], "mitrain").overrides)
    content = sample.read_text()
    assert cfg.model._target_.split(".")[-1] in content
    assert str(cfg.max_epochs) in content and cfg.max_epochs == 30


@pytest.mark.parametrize("flag", [["--cfg", "job"], ["--info"]])
def test_a_sweep_that_asks_for_one_config_is_a_usage_error(flag: list[str]) -> None:
    # Hydra itself would stop with a traceback: -m and --cfg/--info are each a mode of their own.
    with pytest.raises(UsageError, match=f"-m runs a sweep and {flag[0]} prints one config; drop -m"):
        parse_command_line(["-m", "optimizer.lr=0.1,0.2", *flag], "mitrain")
    assert parse_command_line(["optimizer.lr=0.1", *flag], "mitrain").hydra_flags[0] == flag[0]
