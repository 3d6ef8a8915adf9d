"""Train the anime generator (PIRenderer-style, warp then gen stage).

    python train_ag.py data.root=/data/AnimeCeleb data.train_list=lists/train_list.txt
    python train_ag.py experiment=paper data.root=... data.train_list=... data.valid_list=...
    torchrun --nproc_per_node 4 train_ag.py experiment=paper ...
    python train_ag.py ... resume=auto run_dir=outputs/train_ag/my_run

All settings: configs/anime_generator/train_ag.yaml and its groups; the schema:
anime_generator/train_config.py; the loop: anime_generator/train_loop.py.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from anime_generator.train_config import TrainAGConfig  # registers the typed schema
from anime_generator.train_loop import run
from infra.runtime import exit_on_user_error
from infra.typed_config import check_cli_overrides, config_groups

PROGRAM = "train_ag.py"
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "anime_generator"
log = logging.getLogger("train_ag")


@hydra.main(version_base="1.3", config_path="configs/anime_generator", config_name="train_ag")
def main(cfg: DictConfig) -> None:
    summary = exit_on_user_error(PROGRAM, run, cfg)
    log.info("done: %s (last checkpoint %s)", summary["run_dir"], summary["last_checkpoint"])


if __name__ == "__main__":
    exit_on_user_error(PROGRAM, check_cli_overrides, TrainAGConfig, sys.argv[1:],
                       config_groups(CONFIG_DIR), what="generator config")
    main()
