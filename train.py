"""Train EDTN (DECA expression -> 17 anime morphs).

    python train.py experiment=paper data.train=data/vox/packed/train data.test=data/vox/packed/test
    torchrun --nproc_per_node=4 train.py experiment=paper ...

All settings: configs/train.yaml and configs/edtn/*; the loop: edtn/train_loop.py.
"""
import hydra
from omegaconf import DictConfig

import edtn.config  # noqa: F401  (registers the typed schema before Hydra composes)
from infra.runtime import exit_on_user_error
from edtn.train_loop import run


@hydra.main(version_base="1.3", config_path="configs/edtn", config_name="train")
def main(cfg: DictConfig) -> float:
    return exit_on_user_error("train.py", run, cfg)["best_val"]


if __name__ == "__main__":
    main()
