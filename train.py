"""Train EDTN (DECA expression -> 17 anime morphs).

    python train.py experiment=paper data.train=data/vox/packed/train data.test=data/vox/packed/test
    torchrun --nproc_per_node=4 train.py experiment=paper ...

All settings: configs/edtn/train.yaml and its groups (configs/edtn/*/); the schema: edtn/config.py;
the loop: edtn/train_loop.py.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from edtn.config import TrainConfig  # registers the typed schema before Hydra composes
from edtn.train_loop import run
from infra.runtime import exit_on_user_error
from infra.typed_config import check_cli_overrides, config_groups

PROGRAM = "train.py"
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "edtn"


@hydra.main(version_base="1.3", config_path="configs/edtn", config_name="train")
def main(cfg: DictConfig) -> float:
    return exit_on_user_error(PROGRAM, run, cfg)["best_val"]


if __name__ == "__main__":
    exit_on_user_error(PROGRAM, check_cli_overrides, TrainConfig, sys.argv[1:],
                       config_groups(CONFIG_DIR), what="EDTN config")
    main()
