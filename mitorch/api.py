"""The Python API behind mitrain and mitest: mitorch.train(cfg) and mitorch.evaluate(cfg)."""
from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from omegaconf import DictConfig, OmegaConf

from mitorch import build
from mitorch.config import resolve_paths, validate
from mitorch.data.builtin import DETECTION_IMAGE_SIZE as BUILTIN_DETECTION_SIZE
from mitorch.data.builtin import IMAGE_SIZE as BUILTIN_IMAGE_SIZE
from mitorch.data.loaders import is_detection, load_indices, make_dataset, make_loader
from mitorch.engine import distributed
from mitorch.engine.averaging import WeightAverage
from mitorch.engine.costs import measure_costs
from mitorch.engine.loggers import Loggers
from mitorch.engine.progress import PlainProgress, default_progress
from mitorch.engine.tasks import make_task
from mitorch.engine.trainer import Trainer, TrainerOptions, amp_dtype
from mitorch.engine.trainer import evaluate as evaluate_model
from mitorch.errors import ConfigError
from mitorch.models.weights import head_prefixes, load_state, read_weights, save_weights
from mitorch.task_types import main_metric

if TYPE_CHECKING:
    from mitorch.data.detection import DetectionIndex
    from mitorch.data.formats import DatasetIndex

DEFAULT_IMAGE_SIZE = 224
DEFAULT_DETECTION_SIZE = 512


def train(cfg: DictConfig, run_dir: str | Path | None = None, progress: PlainProgress | None = None,
          epoch_callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
          lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains the model that cfg describes and returns its final validation metrics.

    With num_processes > 1 (and no torchrun/AzureML environment already), starts that many
    local processes; under torchrun or AzureML, this process is one rank of the run.

    Args:
        cfg: a composed training config (see mitorch.compose).
        run_dir: where metrics.jsonl (one line per epoch), the files of the tensorboard and
            csv loggers and, unless checkpoint_dir is set, last.pt go; None: none is written.
        progress: where progress goes; default: a Rich bar on a terminal, else log lines.
        epoch_callbacks: called on the main process with each epoch's record (epoch,
            train_loss, lr, val, ...); with num_processes > 1 they must pickle. A run that
            resumes at an epoch's end hands them that epoch's record again first (the run
            that saved the checkpoint may have stopped before they ran): they must not mind
            a record twice.
        lineage: where the run comes from (a queued training's id, fingerprint, ...), recorded
            under `lineage` in every weights file it writes (-o, best.pt); None: not recorded.

    Returns:
        The metrics of the last validation (task metrics, loss, num_samples).

    Raises:
        MiTorchError: a config, data or training problem the user can fix; Interrupted when
            SIGTERM/SIGINT stopped the run after saving a checkpoint.
    """
    cfg = _prepare(cfg)
    if cfg.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        from mitorch.engine.launch import run_local_processes

        build.build_loggers(cfg, run_dir)  # a missing logger library fails here, before any process starts
        if cfg.seed is None:
            cfg.seed = random.randrange(2**31)  # every process must shuffle alike
        return run_local_processes(cfg.num_processes, _train_process, cfg, run_dir, epoch_callbacks, None, lineage)
    return _train_process(cfg, run_dir, epoch_callbacks, progress, lineage)


def _train_process(cfg: DictConfig, run_dir: str | Path | None,
                   epoch_callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
                   progress: PlainProgress | None = None, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    context = distributed.from_environment()
    loggers = build.build_loggers(cfg, run_dir) if context.is_main else Loggers()
    device = _device(cfg, context)
    distributed.start(context, device)
    try:
        with loggers:
            metrics = _fit(cfg, run_dir, epoch_callbacks, progress, context, device, loggers, lineage)
            if cfg.output is not None:
                loggers.log_weights(Path(cfg.output))
            return metrics
    finally:
        distributed.stop()


def _fit(cfg: DictConfig, run_dir: str | Path | None,
         epoch_callbacks: list[Callable[[dict[str, Any]], None]] | None, progress: PlainProgress | None,
         context: distributed.Distributed, device: torch.device,
         loggers: Loggers | None = None, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    train_index, val_index = load_indices(cfg)
    _default_image_size(cfg, train_index, say=_stderr_line if context.is_main else None)
    seed = _from_main(context, cfg.seed if cfg.seed is not None else random.randrange(2**31))
    train_loader, val_loader = _loaders(cfg, train_index, val_index, device, seed, context)
    task = make_task(cfg.task_type, len(train_index.class_names))
    progress = progress or (default_progress() if context.is_main else PlainProgress(stream=open(os.devnull, "w")))
    options = _trainer_options(cfg, seed, run_dir)
    # Every process resumes from the main process's checkpoint (under torchrun each has a run dir).
    options.checkpoint_path = _from_main(context, options.checkpoint_path)

    with _reproducible(cfg):
        model = _model(cfg, task.num_classes, replace_head=True, say=progress.message if context.is_main else None)
        model = _for_training(cfg, model, device, context)
        average = _weight_average(cfg, model, options.max_epochs)
        optimizer, scheduler = _optimizer_and_scheduler(cfg, model, len(train_loader), options, context.world_size)
        forward_model = _forward_model(cfg, model, device, context)
        callbacks = _epoch_callbacks(run_dir, epoch_callbacks, context, loggers)
        if loggers:
            loggers.start(_plain(cfg))
        trainer = Trainer(model, task, optimizer, scheduler, device, options, progress, callbacks,
                          forward_model=forward_model, average=average, distributed=context,
                          on_best=_best_saver(cfg, options.checkpoint_path, train_index.class_names, lineage),
                          step_callbacks=[loggers.log_step] if loggers else (),
                          replay_callbacks=epoch_callbacks or ())
        try:
            metrics = trainer.fit(train_loader, val_loader)
        finally:
            progress.close()

    if cfg.output is not None and context.is_main:
        _save_output(cfg, model, average, train_index.class_names, progress, lineage)
    if cfg.cost_metrics and not cfg.fast_dev_run and context.is_main:
        metrics = {**metrics, **measure_costs(average.module if average is not None else model, cfg.image_size,
                                              cfg.batch_size, device, is_detection(cfg),
                                              amp_dtype(device, cfg.amp))}
    return metrics


def _loaders(cfg: DictConfig, train_index: DatasetIndex | DetectionIndex | None,
             val_index: DatasetIndex | DetectionIndex, device: torch.device, seed: int = 0,
             context: distributed.Distributed | None = None) -> tuple[DataLoader | None, DataLoader]:
    """The training loader (None without train_index) and the validation loader, each over this
    process's share of its images."""
    context = context or distributed.Distributed()
    train_transform, val_transform = build.build_transforms(cfg)
    share = (seed, context.rank, context.world_size)
    train_loader = (make_loader(make_dataset(cfg, train_index, train_transform), cfg, True, device, *share)
                    if train_index is not None else None)
    return train_loader, make_loader(make_dataset(cfg, val_index, val_transform), cfg, False, device, *share)


def _model(cfg: DictConfig, num_classes: int, state: dict[str, torch.Tensor] | None = None,
           replace_head: bool = False, say: Callable[[str], None] | None = None) -> nn.Module:
    """The model of cfg with a head of num_classes outputs and cfg.weights (when set) loaded.

    Args:
        state: cfg.weights already read; None: read here.
        replace_head: class-dependent layers of the weights that do not fit num_classes are
            replaced by new ones (said through say) instead of refused.
    """
    model = build.build_model(cfg, num_classes)
    if cfg.weights is None:
        return model
    if state is None:
        state, _ = read_weights(cfg.weights)
    if load_state(model, state, cfg.weights, replace_head=replace_head) and say is not None:
        layers = ", ".join(prefix.rstrip(".") for prefix in head_prefixes(model))
        say(f"weights: the class-dependent layers ({layers}) of {cfg.weights} do not match the "
            f"dataset's {num_classes} classes; they are replaced by new ones")
    return model


def _for_training(cfg: DictConfig, model: nn.Module, device: torch.device,
                  context: distributed.Distributed) -> nn.Module:
    """The model on device, with batch norms synchronized across processes and the channels-last
    layout where the config asks for them."""
    if context.enabled and cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _optimizer_and_scheduler(cfg: DictConfig, model: nn.Module, train_batches: int, options: TrainerOptions,
                             world_size: int) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """The optimizer (its lr times world_size with scale_lr_with_processes) and its schedule, whose
    epochs last as many updates as the run makes of train_batches batches."""
    optimizer = build.build_optimizer(cfg, model)
    if cfg.scale_lr_with_processes:
        for group in optimizer.param_groups:
            group["lr"] *= world_size
    batches = train_batches if options.max_train_batches is None else min(train_batches, 1)
    scheduler = build.build_scheduler(cfg, optimizer, math.ceil(batches / options.accumulate_grad_batches),
                                      options.max_epochs)
    return optimizer, scheduler


def _forward_model(cfg: DictConfig, model: nn.Module, device: torch.device,
                   context: distributed.Distributed) -> nn.Module:
    """What training calls: the model, wrapped for DDP and compiled where the run asks for it."""
    forward_model = model
    if context.enabled:
        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        forward_model = torch.compile(forward_model)
    return forward_model


def _epoch_callbacks(run_dir: str | Path | None, epoch_callbacks: list[Callable[[dict[str, Any]], None]] | None,
                     context: distributed.Distributed,
                     loggers: Loggers | None) -> list[Callable[[dict[str, Any]], None]]:
    # The loggers come first: a caller's callback may stop the run (a cancel).
    callbacks = [loggers.log_epoch] if loggers else []
    callbacks += epoch_callbacks or []
    if run_dir is not None and context.is_main:
        callbacks.append(_metrics_log(Path(run_dir) / "metrics.jsonl"))
    return callbacks


def _best_saver(cfg: DictConfig, checkpoint_path: Path | None, class_names: list[str],
                lineage: dict[str, Any] | None = None) -> Callable[[nn.Module, dict[str, Any]], None] | None:
    """With keep_best, what saves best.pt beside last.pt; None without checkpoints."""
    if not cfg.keep_best or checkpoint_path is None:
        return None

    def save_best(best_model: nn.Module, metrics: dict[str, Any]) -> None:
        save_weights(checkpoint_path.with_name("best.pt"), best_model, class_names, cfg.task_type, _plain(cfg),
                     lineage)
    return save_best


def _save_output(cfg: DictConfig, model: nn.Module, average: WeightAverage | None, class_names: list[str],
                 progress: PlainProgress, lineage: dict[str, Any] | None = None) -> None:
    final_model = average.module if average is not None else model
    save_weights(cfg.output, final_model, class_names, cfg.task_type, _plain(cfg), lineage)
    progress.message(f"weights saved to {cfg.output}" + (f" ({average.kind} average)" if average else ""))


def _from_main(context: distributed.Distributed, value: Any) -> Any:
    """The main process's value of something each process computed for itself."""
    shared = [value]
    if context.enabled:
        torch.distributed.broadcast_object_list(shared, 0)
    return shared[0]


def _weight_average(cfg: DictConfig, model: nn.Module, max_epochs: int) -> WeightAverage | None:
    if cfg.ema_decay is not None:
        return WeightAverage(model, "ema", decay=cfg.ema_decay)
    if cfg.swa_fraction is not None:
        epochs = max(1, round(max_epochs * cfg.swa_fraction))
        return WeightAverage(model, "swa", start_epoch=max_epochs - epochs + 1)
    return None


def evaluate(cfg: DictConfig, progress: PlainProgress | None = None,
             predictions_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluates cfg.weights on cfg.data.val (or the built-in validation set).

    Class names come from the weights file when it has them (MiTorch outputs), else from
    the training set.

    Args:
        predictions_dir: object detection only: also write predictions.json (COCO results)
            and ground_truth.json (COCO instances of the evaluated images) there.

    Returns:
        The same metrics as train() reports.
    """
    cfg = _prepare(cfg)
    if cfg.weights is None:
        raise ConfigError("mitest needs weights to evaluate: give -w WEIGHTS or weights=PATH")
    device = _device(cfg)
    state, metadata = weights_for_task(cfg)
    class_names = metadata.get("class_names")
    _, val_index = load_indices(cfg, class_names, need_train=class_names is None and cfg.data.train is not None)
    if class_names is None:
        class_names = val_index.class_names
    if predictions_dir is not None and not is_detection(cfg):
        raise ConfigError("--predictions writes COCO files for object_detection only")
    _default_image_size(cfg, metadata=metadata)
    _, val_loader = _loaders(cfg, None, val_index, device)
    task = make_task(cfg.task_type, len(class_names))
    predictions = [] if predictions_dir is not None else None
    with _reproducible(cfg):
        model = _model(cfg, task.num_classes, state)
        model.to(device)
        metrics = evaluate_model(model, val_loader, task, device, amp_dtype(device, cfg.amp),
                                 1 if cfg.fast_dev_run else None, predictions=predictions)
    if predictions_dir is not None:
        from mitorch.data.coco import write_coco

        write_coco(Path(predictions_dir), val_index, predictions)
    return metrics


def weights_for_task(cfg: DictConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """cfg.weights read: (state dict, metadata), refused when trained for another task type."""
    state, metadata = read_weights(cfg.weights)
    trained_for = metadata.get("task_type")
    if trained_for is not None and trained_for != cfg.task_type:
        raise ConfigError(f"weights {cfg.weights} were trained for {trained_for}; set task_type={trained_for}")
    return state, metadata


def _prepare(cfg: DictConfig) -> DictConfig:
    """A private copy of cfg with absolute paths, validated, its targets allow-listed."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(cfg, True)
    resolve_paths(cfg)
    validate(cfg)
    if cfg.base is not None:
        raise ConfigError(f"base={cfg.base} names a queued training's weights: queue this training with misubmit, "
                          "or give the weights file with -w/weights=")
    build.check_targets(cfg)
    if cfg.checkpoint_dir is not None:
        _check_writable_folder(Path(cfg.checkpoint_dir), "checkpoint_dir")
    return cfg


def _check_writable_folder(folder: Path, key: str) -> None:
    """A folder that a run writes to is checked before training, not at its first epoch end."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}={folder} is a file, not a folder; name a folder for the checkpoints")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{key}={folder}: {existing} is a file, not a folder; name a folder for the checkpoints")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={folder}: {existing} is not writable; name a folder you can write to")


def _default_image_size(cfg: DictConfig, train_index: Any = None, metadata: dict[str, Any] | None = None,
                        say: Callable[[str], None] | None = None) -> None:
    """Sets image_size when the config leaves it null (see mitorch.data.sizes.choose), and says
    which size and why."""
    if cfg.image_size is not None:
        return
    from mitorch.data.sizes import choose

    detection = is_detection(cfg)
    builtin = (BUILTIN_DETECTION_SIZE if detection else BUILTIN_IMAGE_SIZE) if cfg.data.train is None else None
    size, why = choose(cfg, train_index, (metadata or {}).get("config"), builtin,
                       DEFAULT_DETECTION_SIZE if detection else DEFAULT_IMAGE_SIZE)
    cfg.image_size = size
    if say is not None:
        say(f"image_size={size}: {why} (set image_size to choose another)")


def _stderr_line(line: str) -> None:
    print(f"mitrain: {line}", file=sys.stderr, flush=True)


def _device(cfg: DictConfig, context: distributed.Distributed | None = None) -> torch.device:
    context = context or distributed.Distributed()
    try:
        device = context.device(cfg.device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{cfg.device}'; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{cfg.device}' was asked for but no CUDA GPU is available; use device=cpu")
    return device


def _trainer_options(cfg: DictConfig, seed: int = 0, run_dir: str | Path | None = None) -> TrainerOptions:
    fast = cfg.fast_dev_run
    folder = cfg.checkpoint_dir or run_dir
    # A fast dev run leaves no checkpoint behind for a real run to resume from.
    checkpoint = Path(folder) / "last.pt" if folder is not None and not fast else None
    return TrainerOptions(
        max_epochs=1 if fast else cfg.max_epochs,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_norm=cfg.gradient_clip_norm,
        val_every_n_epochs=cfg.val_every_n_epochs,
        log_every_n_steps=cfg.log_every_n_steps,
        amp=cfg.amp,
        max_train_batches=1 if fast else None,
        max_val_batches=1 if fast else None,
        seed=seed,
        checkpoint_path=checkpoint,
        resume=cfg.resume,
        best_metric=cfg.best_metric or main_metric(cfg.task_type),
        channels_last=cfg.channels_last,
    )


@contextmanager
def _reproducible(cfg: DictConfig) -> Iterator[None]:
    """Seeds every generator; in deterministic mode, also forbids nondeterministic kernels."""
    if cfg.seed is not None:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def _metrics_log(path: Path) -> Callable[[dict[str, Any]], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(record: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return write


def print_metrics(metrics: dict[str, Any]) -> None:
    """The final metrics as one JSON object on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(metrics), flush=True)


__all__ = ["evaluate", "print_metrics", "train"]
