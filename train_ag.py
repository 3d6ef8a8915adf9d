"""Train the anime generator (PIRenderer-style, warp then gen stage).

    python train_ag.py data.root=/data/AnimeCeleb data.train_list=lists/train_list.txt
    python train_ag.py experiment=paper data.root=... data.train_list=... data.valid_list=...
    torchrun --nproc_per_node 4 train_ag.py experiment=paper ...
    python train_ag.py ... resume=auto run_dir=outputs/train_ag/my_run

The loop lives in :func:`anime_generator.train_loop.run`; the config schema in
:mod:`anime_generator.train_config`.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import anime_generator.train_config  # noqa: F401 - registers the config schema
from anime_generator.train_loop import run
from infra.runtime import exit_on_user_error

log = logging.getLogger("train_ag")


@hydra.main(version_base="1.3", config_path="configs/anime_generator", config_name="train_ag")
def main(cfg: DictConfig) -> None:
    summary = exit_on_user_error("train_ag.py", run, cfg)
    log.info("done: %s (last checkpoint %s)", summary["run_dir"], summary["last_checkpoint"])


if __name__ == "__main__":
    main()
