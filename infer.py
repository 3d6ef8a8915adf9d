"""Animate an anime character with the head motion of a driving video (see configs/infer.yaml).

    python infer.py driving=person.mp4 source=character.png out=anime.mp4
    python infer.py driving=codes/ render=none pose_csv=poses.csv

User-facing errors (a missing asset, a bad input file, a wrong option) print one message and exit
with status 1 -- no traceback (infra.runtime.exit_on_user_error).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from reenact.pipeline import run
from infra.runtime import exit_on_user_error


@hydra.main(version_base="1.3", config_path="configs", config_name="infer")
def main(cfg: DictConfig) -> None:
    exit_on_user_error("infer.py", run, cfg)


if __name__ == "__main__":
    main()
