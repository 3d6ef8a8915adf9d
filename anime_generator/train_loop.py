"""Anime-generator training (``train_ag.py``): two stages, EMA, perceptual losses, DDP, exact resume.

Reads top to bottom: building blocks (init, stages, EMA, batch, loss, checkpoint state) and then
:func:`run`, the loop itself. What one step does (generator README §5, SPEC §6):

1. Each pair is used in both directions: ``images = cat(source, driving)``,
   ``poses = cat(driving_pose, source_pose)``, ``targets = cat(driving, source)``.
2. ``warp`` stage: ``loss = warp_weight · P(warp_image, target)``; the editing net is frozen.
   ``gen`` stage: ``+ final_weight · (P + style_weight · S)(fake_image, target)``.
3. Adam step over every generator parameter except the 48 dead ones; EMA update every step
   (``ema ← ema + (1 − decay)(θ − ema)``); StepLR once per epoch.

The stage switches to ``gen`` at ``train.switch_epoch`` and is stored in the checkpoint: a run
resumed after the switch stays in ``gen``. Checkpoints (``last.pt`` every epoch, ``epoch_XXXX.pt``
every ``checkpoint.every`` epochs) hold both generators, optimiser, scheduler, grad scaler,
epoch, step, stage, RNG states and the resolved config; never the VGG weights. Resume happens at
epoch boundaries and is exact: data order and augmentation depend only on (seed, epoch, index).
Each checkpoint gets a ``.sha256`` sidecar; on resume a truncated, corrupt, foreign or refused
``last.pt`` is skipped for the newest intact ``epoch_XXXX.pt`` (logged), and when none is intact
one message lists every file and why. A second run on the same run dir fails fast (lock).
"""
from __future__ import annotations

import copy
import logging
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from infra.distributed import DistInfo, cleanup_distributed, init_distributed
from infra.files import atomic_save, clean_stale_temps
from infra.run_dir import load_resume_checkpoint, resolve_run_dir, training_run
from infra.runtime import capture_rng_state, resolve_device, restore_rng_state, seed_everything

from .checkpoint import OUR_FORMAT, checkpoint_filter_fn, generator_checkpoint, load_checkpoint_file
from .config import GeneratorConfig
from .data import (AnimeCelebDataset, AnimeCelebDecaDataset, ColorJitterParams, build_dataloader,
                   set_loader_epoch)
from .model import AnimeGenerator
from .perceptual import PerceptualLoss, VGG19FeatureExtractor, load_vgg19_features, VGG19_LAYER_INDEX
from .train_config import DatasetName, Precision, Stage, to_plain_dict, validate_config

__all__ = ["init_weights", "set_stage", "stage_for_epoch", "update_ema", "bidirectional_batch",
           "GeneratorLoss", "build_generator", "build_loss", "build_loaders", "training_state",
           "load_training_state", "run"]

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
DEFAULT_RUN_DIR = "outputs/train_ag"   # used only when neither run_dir nor Hydra gives one
AUTOCAST_DTYPES = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


# ----------------------------------------------------------------------------- model pieces
def init_weights(model: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference init: every Conv*/Linear weight ~ N(0, gain), biases 0; norms untouched."""
    for module in model.modules():
        name = type(module).__name__
        if ("Conv" in name or "Linear" in name) and getattr(module, "weight", None) is not None:
            nn.init.normal_(module.weight, 0.0, gain)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return model


def set_stage(generator: AnimeGenerator, stage: Stage) -> None:
    """Freeze what the stage does not train: the editing net in ``warp``; dead params always."""
    generator.requires_grad_(True)
    if Stage(stage) == Stage.warp:
        generator.editing_net.requires_grad_(False)
    dead = set(generator.dead_parameter_names())
    for name, param in generator.named_parameters():
        if name in dead:
            param.requires_grad_(False)


def stage_for_epoch(epoch: int, switch_epoch: int, initial: Stage, previous: Optional[Stage] = None) -> Stage:
    """``gen`` from ``switch_epoch`` on (or once reached: the stage never goes back)."""
    if previous == Stage.gen or initial == Stage.gen or epoch >= switch_epoch:
        return Stage.gen
    return Stage.warp


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← ema + (1 − decay)·(model − ema)`` over parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def bidirectional_batch(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(images, poses, targets), each pair used both ways: 2B images (README §5)."""
    if "anime" in batch:  # animeceleb_deca: the generator trains on the anime side
        batch = batch["anime"]
    src, drv = batch["source"].to(device), batch["driving"].to(device)
    src_pose, drv_pose = batch["source_pose"].to(device), batch["driving_pose"].to(device)
    return torch.cat([src, drv]), torch.cat([drv_pose, src_pose]), torch.cat([drv, src])


class GeneratorLoss:
    """Weighted warp and final perceptual losses sharing one frozen VGG19.

    Args:
        extractor: the VGG19 feature extractor (not part of the generator: never checkpointed).
        cfg: the ``loss`` config node.
    """

    def __init__(self, extractor: VGG19FeatureExtractor, cfg: DictConfig):
        common = dict(num_scales=cfg.num_scales, layer_weights=list(cfg.layer_weights),
                      input_range=cfg.input_range.value,
                      min_feature_size=cfg.min_feature_size)
        self.warp = PerceptualLoss(extractor, style_weight=0.0, **common)
        self.final = PerceptualLoss(extractor, style_weight=cfg.style_weight, **common)
        self.warp_weight, self.final_weight = float(cfg.warp_weight), float(cfg.final_weight)

    def __call__(self, out: dict[str, torch.Tensor], target: torch.Tensor,
                 stage: Stage) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its detached terms (``warp_perceptual``, ``final_perceptual``, ...)."""
        warp = self.warp.breakdown(out["warp_image"], target)
        total = self.warp_weight * warp.total
        terms = {"warp_perceptual": warp.total.detach()}
        if Stage(stage) == Stage.gen:
            final = self.final.breakdown(out["fake_image"], target)
            total = total + self.final_weight * final.total
            terms["final_perceptual"] = final.perceptual.sum().detach()
            terms["final_style"] = final.style.sum().detach()
            terms["final"] = final.total.detach()
        terms["total"] = total.detach()
        return total, terms


def build_generator(cfg: DictConfig) -> AnimeGenerator:
    """Generator from ``cfg.model``, initialised per ``cfg.train`` (reference init by default)."""
    generator = AnimeGenerator(GeneratorConfig.from_dict(OmegaConf.to_container(cfg.model)))
    if cfg.train.init == "normal":
        init_weights(generator, cfg.train.init_gain)
    if cfg.train.init_checkpoint:
        obj = load_checkpoint_file(cfg.train.init_checkpoint, map_location="cpu",
                                   trust_checkpoint=cfg.train.trust_init_checkpoint)
        generator.load_state_dict(checkpoint_filter_fn(obj, use_ema=False), strict=True)
        log.info("initialised the generator from %s", cfg.train.init_checkpoint)
    # Bit-identical output, no work on the 48 dead tensors (they stay in the state dict).
    generator.set_skip_dead_branch(True)
    return generator


def build_loss(cfg: DictConfig, device: torch.device) -> GeneratorLoss:
    """Load VGG19 (asset ``vgg19``; AssetError when absent) and build both losses on ``device``."""
    layers = list(cfg.loss.layers)
    last = max(VGG19_LAYER_INDEX[name] for name in layers) if set(layers) <= set(VGG19_LAYER_INDEX) else None
    if last is None:
        raise ValueError(f"loss.layers {layers}: choose from {list(VGG19_LAYER_INDEX)}")
    features = load_vgg19_features(cfg.loss.vgg_path, num_modules=last + 1)
    extractor = VGG19FeatureExtractor(features, layers).to(device)
    return GeneratorLoss(extractor, cfg.loss)


def build_loaders(cfg: DictConfig, info: DistInfo) -> tuple[Any, Any]:
    """Train loader (and valid loader or ``None``) from ``cfg.data``."""
    d = cfg.data
    if d.batch_size % info.world_size:
        raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the {info.world_size} ranks")
    jitter = (ColorJitterParams(d.color_jitter.brightness, d.color_jitter.contrast, d.color_jitter.saturation,
                                d.color_jitter.hue) if d.color_jitter.enabled else None)

    def dataset(id_list: str, train: bool):
        anime = AnimeCelebDataset(
            d.root, id_list, image_size=d.image_size, train=train, csv_name=d.csv_name,
            image_folder=d.image_folder, cache_path=d.cache_path, background=list(d.background),
            composite=str(d.composite.value), resize_filter=d.resize_filter, time_flip=d.time_flip,
            horizontal_flip=d.horizontal_flip, color_jitter=jitter,
            num_repeats=d.num_repeats if train else 1, seed=cfg.seed)
        if d.name == DatasetName.animeceleb_deca:
            return AnimeCelebDecaDataset(anime, d.vox_root, "train" if train else "valid",
                                         num_repeats=d.num_repeats if train else 1, seed=cfg.seed)
        return anime

    common = dict(num_workers=d.num_workers, rank=info.rank, world_size=info.world_size, seed=cfg.seed)
    train = build_dataloader(dataset(d.train_list, True), d.batch_size // info.world_size, True, **common)
    valid = None
    if d.valid_list and cfg.train.valid_every > 0:
        valid = build_dataloader(dataset(d.valid_list, False), d.valid_batch_size, False, **common)
    return train, valid


# ----------------------------------------------------------------------------- checkpoint state
def training_state(generator: nn.Module, ema: nn.Module, optimizer, scheduler, scaler, *, epoch: int,
                   step: int, stage: Stage, cfg: DictConfig) -> dict[str, Any]:
    """Our checkpoint (``format: edtn-generator/1``) plus the training state; ``epoch`` = epochs done."""
    return generator_checkpoint(
        generator, ema, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        epoch=epoch, step=step, stage=Stage(stage).value, rng=capture_rng_state(),
        config=to_plain_dict(cfg))


TRAINING_STATE_KEYS = ("generator", "generator_ema", "optimizer", "scheduler", "epoch", "step",
                       "stage", "rng")


def load_training_state(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a ``train_ag.py`` checkpoint (``weights_only``) and check that it is one.

    Raises:
        UnsafeFileError: the file needs pickle globals ours never contain (refused, no code runs).
        CheckpointError: unreadable (truncated / corrupt) file.
        ValueError: a foreign file (e.g. an exported generator or the authors' ``.ckpt``): the
            message lists what is missing and says to use ``train.init_checkpoint`` for weights.
    """
    state = load_checkpoint_file(path, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != OUR_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a train_ag.py training checkpoint (format {found!r}, expected "
                         f"{OUR_FORMAT!r}); to start from its weights use train.init_checkpoint=")
    missing = [k for k in TRAINING_STATE_KEYS if k not in state or state[k] is None]
    if missing:
        raise ValueError(f"{path}: a generator checkpoint without training state (missing {missing}); "
                         "it cannot be resumed; to start from its weights use train.init_checkpoint=")
    return state


# ----------------------------------------------------------------------------- logging helpers
@torch.no_grad()
def _image_grid(ema: AnimeGenerator, images, poses, targets, stage: Stage, samples: int) -> torch.Tensor:
    """Rows of source | driving (= ground truth) | warp | fake | |fake − gt| (EMA generator).

    The fake is shown clamped to [0,1]: the loss drives it towards the [0,1] target whatever the
    generator's ``output_range``.
    """
    from torchvision.utils import make_grid

    k = min(samples, images.shape[0])
    out = ema(images[:k], poses[:k], stage=Stage(stage).value)
    fake = out.get("fake_image", torch.zeros_like(images[:k])).float().clamp(0, 1)
    columns = [images[:k], targets[:k], out["warp_image"].float().clamp(0, 1), fake,
               (fake - targets[:k]).abs()]
    tiles = torch.stack(columns, dim=1).flatten(0, 1)
    return make_grid(tiles.cpu(), nrow=len(columns))


# ----------------------------------------------------------------------------- the loop
def run(cfg: Any) -> dict[str, Any]:
    """Train the anime generator as configured; returns a summary.

    Args:
        cfg: the composed ``train_ag`` config (DictConfig or plain dict); validated here.
    Returns:
        ``{'run_dir', 'last_checkpoint', 'epoch', 'step', 'stage', 'losses'}`` where ``losses`` is
        the list of per-step total losses of this process.
    """
    cfg = validate_config(cfg)
    device = resolve_device(cfg.device)
    info, device = init_distributed(device)
    try:
        with training_run(resolve_run_dir(cfg.run_dir, DEFAULT_RUN_DIR), info.is_main, "train_ag.log"):
            return _train(cfg, info, device)
    finally:
        cleanup_distributed()


def _train(cfg: DictConfig, info: DistInfo, device: torch.device) -> dict[str, Any]:
    run_dir = resolve_run_dir(cfg.run_dir, DEFAULT_RUN_DIR)
    ckpt_dir = run_dir / "checkpoints"
    seed_everything(cfg.seed)
    if info.is_main:
        log.info("run dir %s, device %s, world size %d", run_dir, device, info.world_size)

    precision = Precision(cfg.train.precision)
    if precision != Precision.fp32 and device.type != "cuda":
        warnings.warn(f"train.precision={precision.value} needs CUDA; training in fp32 on {device}")
        precision = Precision.fp32
    if str(cfg.model.output_range) != str(cfg.loss.input_range.value):
        warnings.warn(f"model.output_range={cfg.model.output_range} but loss.input_range="
                      f"{cfg.loss.input_range.value}: use original/original (reference) or unit/unit")
    autocast = (torch.autocast("cuda", dtype=AUTOCAST_DTYPES[precision])
                if precision != Precision.fp32 else nullcontext())
    scaler = torch.amp.GradScaler("cuda", enabled=precision == Precision.fp16)

    # --- model, EMA, loss, optimiser, data
    generator = build_generator(cfg).to(device)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    loss_fn = build_loss(cfg, device)
    optimizer = torch.optim.Adam(generator.trainable_parameters(), lr=cfg.optim.lr,
                                 betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                 weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.optim.lr_step_size, cfg.optim.lr_gamma)
    train_loader, valid_loader = build_loaders(cfg, info)

    # --- resume
    start_epoch, step, stage = 0, 0, None
    if info.is_main:
        clean_stale_temps(ckpt_dir, all_in_folder=True)  # left by a killed save; no writer is live
    resumed = load_resume_checkpoint(cfg.resume, ckpt_dir,
                                     lambda path: load_training_state(path, map_location=device),
                                     LAST_CHECKPOINT)
    if resumed is not None:
        resume, state = resumed
        generator.load_state_dict(state["generator"], strict=True)
        ema.load_state_dict(state["generator_ema"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, stage = int(state["epoch"]), int(state["step"]), Stage(state["stage"])
        restore_rng_state(state["rng"])
        if info.is_main:
            log.info("resumed from %s: epoch %d, step %d, stage %s", resume, start_epoch, step, stage.value)

    writer = None
    if info.is_main and cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))

    from tqdm import tqdm

    losses: list[float] = []
    model: nn.Module = generator
    active: Optional[Stage] = None   # the stage that freezing and the DDP wrapper are set up for
    last_path: Optional[Path] = None
    for epoch in range(start_epoch, cfg.train.epochs):
        # --- stage (monotonic), freezing and the DDP wrapper that matches it
        stage = stage_for_epoch(epoch, cfg.train.switch_epoch, Stage(cfg.train.initial_stage), stage)
        if stage != active:
            active = stage
            set_stage(generator, stage)
            model = generator
            if info.enabled:
                model = nn.parallel.DistributedDataParallel(
                    generator, device_ids=[device.index] if device.type == "cuda" else None)
            if info.is_main:
                log.info("epoch %d: stage %s", epoch, stage.value)

        generator.train()
        set_loader_epoch(train_loader, epoch)
        bar = tqdm(train_loader, desc=f"epoch {epoch} [{stage.value}]",
                   disable=not (info.is_main and cfg.log.progress), leave=False)
        for i, batch in enumerate(bar):
            if cfg.train.max_steps_per_epoch is not None and i >= cfg.train.max_steps_per_epoch:
                break
            images, poses, targets = bidirectional_batch(batch, device)
            with autocast:
                out = model(images, poses, stage=stage.value)
                total, terms = loss_fn(out, targets, stage)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            update_ema(ema, generator, cfg.train.ema_decay)
            step += 1
            losses.append(float(total.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")

            if writer is not None and cfg.log.every and step % cfg.log.every == 0:
                for name, value in terms.items():
                    writer.add_scalar(f"train/{name}", float(value), step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                writer.add_scalar("train/stage_gen", float(stage == Stage.gen), step)
            if writer is not None and cfg.log.image_every and step % cfg.log.image_every == 0:
                writer.add_image("train/source_driving_warp_fake_error",
                                 _image_grid(ema, images, poses, targets, stage, cfg.log.image_samples), step)
        scheduler.step()

        if valid_loader is not None and (epoch + 1) % cfg.train.valid_every == 0 and info.is_main:
            _validate(ema, loss_fn, valid_loader, stage, device, cfg, writer, step)

        # --- checkpoints (main rank; all ranks hold identical weights under DDP)
        if info.is_main:
            state = training_state(generator, ema, optimizer, scheduler, scaler, epoch=epoch + 1,
                                   step=step, stage=stage, cfg=cfg)
            last_path = atomic_save(state, ckpt_dir / LAST_CHECKPOINT, checksum=True)
            if cfg.checkpoint.every and (epoch + 1) % cfg.checkpoint.every == 0:
                atomic_save(state, ckpt_dir / f"epoch_{epoch + 1:04d}.pt", checksum=True)
        if info.enabled:
            torch.distributed.barrier()

    if writer is not None:
        writer.close()
    return {"run_dir": str(run_dir), "last_checkpoint": str(last_path or ckpt_dir / LAST_CHECKPOINT),
            "epoch": cfg.train.epochs, "step": step, "stage": stage.value if stage else None,
            "losses": losses}


@torch.no_grad()
def _validate(ema: AnimeGenerator, loss_fn: GeneratorLoss, loader, stage: Stage, device: torch.device,
              cfg: DictConfig, writer, step: int) -> dict[str, float]:
    """Mean loss terms of the EMA generator over ``train.valid_batches`` validation batches."""
    sums: dict[str, float] = {}
    count = 0
    for i, batch in enumerate(loader):
        if i >= cfg.train.valid_batches:
            break
        images, poses, targets = bidirectional_batch(batch, device)
        out = ema(images, poses, stage=stage.value)
        _, terms = loss_fn(out, targets, stage)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        count += 1
        if i == 0 and writer is not None:
            writer.add_image("valid/source_driving_warp_fake_error",
                             _image_grid(ema, images, poses, targets, stage, cfg.log.image_samples), step)
    means = {k: v / max(count, 1) for k, v in sums.items()}
    if writer is not None:
        for name, value in means.items():
            writer.add_scalar(f"valid/{name}", value, step)
    return means
