"""Animate an anime character with the head motion of a driving video (see configs/infer.yaml).

    python infer.py driving=person.mp4 source=character.png out=anime.mp4
    python infer.py driving=codes/ render=none pose_csv=poses.csv

Options are typed (reenact/config.py): an unknown key or a value of the wrong type stops at once
with one message naming the key. User-facing errors (a missing asset, a bad input file) print one
message and exit with status 1 -- no traceback (infra.runtime.exit_on_user_error).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from infra.runtime import exit_on_user_error
from infra.typed_config import check_cli_overrides
from reenact.config import InferConfig
from reenact.pipeline import run

PROGRAM = "infer.py"


@hydra.main(version_base="1.3", config_path="configs", config_name="infer")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(PROGRAM, run, cfg)


if __name__ == "__main__":
    exit_on_user_error(PROGRAM, check_cli_overrides, InferConfig, sys.argv[1:], what="infer config")
    main()
