"""EDTN training loop: ``run(cfg)`` is what ``train.py`` calls (and what tests call directly).

Read top to bottom: config check → device / DDP → run dir and logging → data (+ real-target
cache) → model, optimiser, loss → resume → epochs of (train steps, validation, checkpoints).

A resumed run continues *exactly*: the checkpoint holds model, optimiser, the position
(epoch, batch within the epoch, global step), the RNG states and the loader generator; the
frame order of an epoch depends only on ``(seed, epoch)``, so resuming from any checkpoint
gives the same weights, bit for bit, as a run that never stopped.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from infra.assets import resolve_asset
from edtn.config import to_plain_dict, validate_config
from edtn.data import CodeFrames, build_loader, open_split, real_targets_for
from infra.distributed import DistInfo, cleanup_distributed, init_distributed
from edtn.losses import LOSS_TERMS, GeometryLoss, LossWeights, build_geometry_loss, project_landmarks
from edtn.model import EDTN, checkpoint_filter_fn
from edtn.optim import make_optimizer
from infra.checkpoint import load_torch_file
from infra.files import atomic_path, atomic_save, clean_stale_temps
from infra.run_dir import load_resume_checkpoint, resolve_run_dir, training_run
from infra.runtime import (USER_ERRORS, capture_rng_state, resolve_device, restore_rng_state,
                           seed_everything, unwrap_model)

__all__ = ["run", "evaluate", "save_checkpoint",
           "load_checkpoint", "landmark_morph_figure", "CHECKPOINT_FORMAT", "LOSS_TERMS"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edtn-train-checkpoint/1"
DEFAULT_RUN_DIR = Path("outputs/edtn/run")   # used only when neither run_dir nor Hydra gives one
CHECKPOINT_SUBDIR = "checkpoints"
TENSORBOARD_SUBDIR = "tb"
LAST_NAME, BEST_NAME = "last.pt", "best.pt"
N_MORPHS = 17


def run(cfg: Any) -> dict:
    """Train EDTN as configured.

    Returns ``{'best_val': float, 'last_val': dict, 'initial_val': dict (empty on resume),
    'step': int, 'epoch': int, 'run_dir': str}`` (val dicts: mean of each loss term). ``cfg`` is the composed Hydra config (or a plain dict of the same shape)."""
    # ---------------------------------------------------------------- config, device, processes
    cfg = validate_config(cfg)
    device = resolve_device(cfg.device)
    dist, device = init_distributed(device)
    try:
        with training_run(resolve_run_dir(cfg.run_dir, DEFAULT_RUN_DIR), dist.is_main) as run_dir:
            try:
                return _train(cfg, dist, device)
            except USER_ERRORS:  # missing asset / bad data: the entry point prints the message
                raise
            except Exception:  # a bug: its traceback goes into train.log too
                log.exception("EDTN training failed (run dir %s)", run_dir)
                raise
    finally:
        cleanup_distributed()


def _train(cfg: DictConfig, dist: DistInfo, device: torch.device) -> dict:
    main = dist.is_main
    run_dir = resolve_run_dir(cfg.run_dir, DEFAULT_RUN_DIR)
    ckpt_dir = run_dir / CHECKPOINT_SUBDIR
    if main:
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(to_plain_dict(cfg)))
        log.info("run dir %s | device %s | world size %d", run_dir, device, dist.world_size)
    if cfg.data.batch_size % dist.world_size:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                         f"{dist.world_size} DDP processes")
    seed_everything(cfg.seed)

    # ---------------------------------------------------------------- loss (needed by the cache)
    weights = LossWeights(vertex=cfg.loss.vertex, landmark=cfg.loss.landmark, eye=cfg.loss.eye,
                          lip=cfg.loss.lip)
    loss_fn = build_geometry_loss(cfg.loss.flame_model, cfg.loss.landmark_embedding, cfg.loss.basis,
                                  weights, cfg.loss.impl.value, device)

    # ---------------------------------------------------------------- data
    train_src, train_videos = open_split(cfg.data.train, cfg.data.train_list, progress=main)
    if cfg.data.test in (None, "", cfg.data.train):   # one source, split by the list files
        test_src = train_src
        if cfg.data.test_list:
            test_videos = open_split(train_src, cfg.data.test_list)[1]
        else:  # the videos not in train_list (all of them when there is no list)
            test_videos = [v for v in train_src.videos if v not in train_videos] or train_videos
            if test_videos is train_videos and main:
                log.warning("no test split given (data.test / data.test_list): validating on "
                            "the training videos")
    else:
        test_src, test_videos = open_split(cfg.data.test, cfg.data.test_list, progress=main)

    def cache_dir(src):  # packed codes keep their cache beside them; .mat folders in the run dir
        return cfg.data.cache_dir or (None if src.packed is not None else run_dir / "cache")

    train_targets = test_targets = None
    if loss_fn.impl == "fast":
        if not main:
            torch_dist.barrier()  # wait for rank 0 to build the cache files, then just load them
        train_targets = real_targets_for(train_src, loss_fn, cache_dir(train_src), progress=main)
        test_targets = train_targets if test_src is train_src else real_targets_for(
            test_src, loss_fn, cache_dir(test_src), progress=main)
        if main and dist.enabled:
            torch_dist.barrier()
    train_set = CodeFrames(train_src, train_videos, train_targets)
    test_set = CodeFrames(test_src, test_videos, test_targets)
    per_rank_batch = cfg.data.batch_size // dist.world_size
    loader_kind = dict(num_workers=cfg.data.num_workers, device=device, rank=dist.rank,
                       world_size=dist.world_size, on_device=cfg.data.on_device,
                       resident=cfg.data.loader.value == "resident")
    train_loader = build_loader(train_set, per_rank_batch, train=True, seed=cfg.seed,
                                frames_per_video=cfg.data.frames_per_video, **loader_kind)
    test_loader = build_loader(test_set, max(1, cfg.data.eval_batch_size // dist.world_size),
                               train=False, **loader_kind)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the training split "
                         f"({len(train_loader.sampler) * dist.world_size} frames per epoch); "
                         "lower it (training drops incomplete batches)")
    if main:
        log.info("train: %d videos, %d frames, %d steps/epoch | test: %d videos, %d frames",
                 len(train_videos), len(train_set), steps_per_epoch, len(test_videos), len(test_set))

    # ---------------------------------------------------------------- model and optimiser
    model = EDTN().to(device)
    if cfg.model.init:
        state = load_torch_file(resolve_asset("edtn_weights", cfg.model.init), map_location="cpu",
                                trust_checkpoint=cfg.model.trust_init)
        model.load_state_dict(checkpoint_filter_fn(state), strict=True)
    optimizer = make_optimizer(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                               impl=cfg.optim.impl, weight_decay=cfg.optim.weight_decay)

    # ---------------------------------------------------------------- resume
    epoch, batch_in_epoch, step, best_val = 0, 0, 0, math.inf
    if main:
        clean_stale_temps(ckpt_dir, all_in_folder=True)  # left by a killed save; no writer is live
    resumed = load_resume_checkpoint(cfg.resume, ckpt_dir, load_checkpoint, LAST_NAME)
    if resumed is not None:
        resume_path, ckpt = resumed
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optim"])
        epoch, batch_in_epoch, step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        best_val = ckpt["best_val"]
        restore_rng_state(ckpt["rng"])
        train_loader.generator.set_state(ckpt["loader_generator"])
        if main:
            log.info("resumed from %s at epoch %d, batch %d, step %d", resume_path, epoch,
                     batch_in_epoch, step)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = _make_writer(run_dir) if (main and cfg.log.tensorboard) else None
    initial_val: dict = {}
    if step == 0:  # the untrained model's validation loss: the baseline of every curve
        initial_val = last_val = evaluate(model, test_loader, loss_fn, device, dist)
        if main:
            log.info("initial val %s", _fmt(initial_val))
            if writer is not None:
                for k, v in initial_val.items():
                    writer.add_scalar(f"val/{k}", v, 0)
    else:
        last_val = {}

    # ---------------------------------------------------------------- training
    # Plain values for the step loop (a DictConfig look-up costs microseconds per access).
    max_steps, log_every, figure_every = cfg.max_steps, cfg.log.every, cfg.log.figure_every
    stop = max_steps is not None and step >= max_steps
    while epoch < cfg.epochs and not stop:
        model.train()
        train_loader.sampler.set_epoch(epoch)
        # resuming mid-epoch: the batches before batch_in_epoch were already trained on
        bar = tqdm(_epoch_batches(train_loader, batch_in_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   total=steps_per_epoch, initial=batch_in_epoch,
                   disable=not (main and cfg.log.progress), dynamic_ncols=True)
        tick, tick_cpu, samples = time.perf_counter(), time.process_time(), 0
        epoch_tick, epoch_step = tick, step
        for i, batch in bar:
            x = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True) if "target" in batch else None
            a = model(x)
            losses = loss_fn(a, x, real_targets=target)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            step += 1
            samples += x.shape[0] * dist.world_size

            if main and step % log_every == 0:
                # samples/s of the steps since the last log (data, forward, backward, optimiser),
                # per wall-clock second and per CPU second of this process (all its threads; less
                # sensitive to other jobs on a shared machine)
                samples_per_s = samples / max(time.perf_counter() - tick, 1e-9)
                samples_per_cpu_s = samples / max(time.process_time() - tick_cpu, 1e-9)
                values = {k: v.detach().item() for k, v in losses.items()}
                bar.set_postfix(loss=f"{values['total']:.4g}", samples_per_s=f"{samples_per_s:.0f}")
                if writer is not None:
                    for k, v in values.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                    writer.add_scalar("train/samples_per_s", samples_per_s, step)
                    writer.add_scalar("train/samples_per_cpu_s", samples_per_cpu_s, step)
                tick, tick_cpu, samples = time.perf_counter(), time.process_time(), 0
            if writer is not None and figure_every and step % figure_every == 0:
                pause, pause_cpu = time.perf_counter(), time.process_time()
                writer.add_figure("train/landmarks_and_morphs",
                                  landmark_morph_figure(loss_fn, x[:1].detach(), a[:1].detach()), step)
                pause = time.perf_counter() - pause  # drawing is logging, not training
                tick, epoch_tick = tick + pause, epoch_tick + pause
                tick_cpu += time.process_time() - pause_cpu
            if max_steps is not None and step >= max_steps:
                stop = True
                batch_in_epoch = i + 1
                break
        bar.close()
        if main and step > epoch_step:
            log.info("epoch %d: %d steps, %.0f samples/s", epoch + 1, step - epoch_step,
                     (step - epoch_step) * cfg.data.batch_size
                     / max(time.perf_counter() - epoch_tick, 1e-9))
        if stop and batch_in_epoch < steps_per_epoch:
            # Stopped inside an epoch: save the exact position, no validation.
            if main:
                save_checkpoint(ckpt_dir / LAST_NAME, model, optimizer, train_loader, cfg,
                                epoch=epoch, batch_in_epoch=batch_in_epoch, step=step,
                                best_val=best_val)
            break
        epoch, batch_in_epoch = epoch + 1, 0

        # ------------------------------------------------------------ validation and checkpoints
        last_val = evaluate(model, test_loader, loss_fn, device, dist)
        is_best = last_val["total"] < best_val
        best_val = min(best_val, last_val["total"])
        if main:
            log.info("epoch %d step %d | val %s", epoch, step, _fmt(last_val))
            if writer is not None:
                for k, v in last_val.items():
                    writer.add_scalar(f"val/{k}", v, step)
                writer.flush()
            state = dict(epoch=epoch, batch_in_epoch=0, step=step, best_val=best_val)
            save_checkpoint(ckpt_dir / LAST_NAME, model, optimizer, train_loader, cfg, **state)
            if is_best:
                save_checkpoint(ckpt_dir / BEST_NAME, model, optimizer, train_loader, cfg, **state)
            if cfg.checkpoint.every and epoch % cfg.checkpoint.every == 0:
                save_checkpoint(ckpt_dir / f"epoch_{epoch:04d}.pt", model, optimizer, train_loader,
                                cfg, **state)

    # ---------------------------------------------------------------- done
    if writer is not None:
        writer.close()
    if main:
        log.info("finished at step %d; best val total %.6g; outputs in %s", step, best_val, run_dir)
    return {"best_val": best_val, "last_val": last_val, "initial_val": initial_val, "step": step,
            "epoch": epoch, "run_dir": str(run_dir)}


# ============================================================================= building blocks
def _epoch_batches(loader, start: int):
    """(index, batch) of the current epoch from batch ``start`` on. A :class:`ResidentLoader`
    jumps straight there; a ``DataLoader`` loads and drops the earlier batches."""
    if hasattr(loader, "batches"):
        return enumerate(loader.batches(start), start)
    return ((i, batch) for i, batch in enumerate(loader) if i >= start)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, loss_fn: GeometryLoss, device: torch.device,
             dist: DistInfo = DistInfo()) -> dict[str, float]:
    """Frame-weighted mean of every loss term over ``loader`` (summed over DDP ranks).

    ``model`` is an ``nn.Module`` or any callable (B, 53) -> (B, 17), e.g. a training-free
    mapping of :mod:`edtn.mappings`."""
    is_module = isinstance(model, torch.nn.Module)
    was_training = model.training if is_module else False
    if is_module:
        model.eval()
    sums = torch.zeros(len(LOSS_TERMS) + 1, dtype=torch.float64, device=device)
    for batch in loader:
        x = batch["input"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True) if "target" in batch else None
        losses = loss_fn(model(x), x, real_targets=target)
        n = x.shape[0]
        # Every term is a mean over the batch (landmark: normalised by B), so n·term sums exactly.
        sums += torch.stack([losses[k].detach().double() * n for k in LOSS_TERMS]
                            + [torch.tensor(float(n), dtype=torch.float64, device=device)])
    if dist.enabled:
        torch_dist.all_reduce(sums)
    if is_module:
        model.train(was_training)
    count = max(float(sums[-1]), 1.0)
    return {k: float(sums[i]) / count for i, k in enumerate(LOSS_TERMS)}


# ============================================================================= checkpoints
def save_checkpoint(path: Path, model, optimizer, loader, cfg: DictConfig, *, epoch: int,
                    batch_in_epoch: int, step: int, best_val: float) -> Path:
    """Write a training checkpoint atomically, with a ``.sha256`` sidecar (verified on resume).
    Everything in it loads with ``torch.load(weights_only=True)``: tensors, numbers, strings and
    plain containers."""
    return atomic_save({
        "format": CHECKPOINT_FORMAT,
        "model": unwrap_model(model).state_dict(),
        "optim": optimizer.state_dict(),
        "epoch": epoch,                    # epochs completed (the epoch to continue in)
        "batch_in_epoch": batch_in_epoch,  # batches of that epoch already trained on
        "step": step,
        "best_val": best_val,
        "rng": capture_rng_state(),
        "loader_generator": loader.generator.get_state(),
        "config": to_plain_dict(cfg),
    }, path, checksum=True)


_CHECKPOINT_KEYS = ("model", "optim", "epoch", "batch_in_epoch", "step", "best_val", "rng",
                    "loader_generator")


def load_checkpoint(path: Path) -> dict:
    """Load one of our training checkpoints (CPU tensors, ``weights_only``) and check its format.

    Raises:
        UnsafeFileError: the file needs pickle globals ours never contain (refused, no code runs).
        ValueError: not an EDTN training checkpoint, or an entry is missing.
    """
    ckpt = load_torch_file(path, map_location="cpu")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an EDTN training checkpoint (format "
                         f"{ckpt.get('format') if isinstance(ckpt, dict) else None!r}, expected "
                         f"{CHECKPOINT_FORMAT!r}); to start from weights only use model.init=")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: EDTN training checkpoint without {missing}")
    return ckpt


# ============================================================================= logging
def _fmt(values: dict) -> str:
    return " ".join(f"{k} {v:.5g}" for k, v in values.items())


def _make_writer(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / TENSORBOARD_SUBDIR))


def landmark_morph_figure(loss_fn: GeometryLoss, x: torch.Tensor, a: torch.Tensor):
    """Matplotlib figure for one sample: real vs fake projected 2-D landmarks (left) and the
    17 predicted morphs (right). ``x`` (1, 53) driving code, ``a`` (1, 17) prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flame = loss_fn.flame
    dtype = flame.v_template.dtype
    x, a = x.to(dtype), a.to(dtype)
    zeros_shape = x.new_zeros(1, 100)
    with torch.no_grad():
        real = flame(zeros_shape, x[:, :50], torch.cat([x.new_zeros(1, 3), x[:, 50:53]], dim=1))
        fake = flame(zeros_shape, a @ loss_fn.basis.to(dtype), x.new_zeros(1, 6))
    real_lmk = project_landmarks(real.landmarks2d)[0].cpu().numpy()
    fake_lmk = project_landmarks(fake.landmarks2d)[0].cpu().numpy()
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4.5))
    ax_l.scatter(real_lmk[:, 0], real_lmk[:, 1], s=10, label="real (DECA code)")
    ax_l.scatter(fake_lmk[:, 0], fake_lmk[:, 1], s=10, marker="x", label="fake (EDTN morphs)")
    ax_l.invert_yaxis()  # projected y points down (image convention)
    ax_l.set_aspect("equal")
    ax_l.legend(loc="lower right", fontsize=8)
    ax_l.set_title("projected landmarks")
    ax_m.bar(np.arange(N_MORPHS), a[0].detach().cpu().numpy())
    ax_m.set_ylim(0, 1)
    ax_m.set_xticks(np.arange(N_MORPHS), [f"morph_{k:02d}" for k in range(N_MORPHS)],
                    rotation=90, fontsize=7)
    ax_m.set_title("predicted morphs")
    fig.tight_layout()
    return fig
