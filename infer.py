"""Animate an anime character with the head motion of a driving video (see configs/infer.yaml).

    python infer.py driving=person.mp4 source=character.png out=anime.mp4
    python infer.py driving=codes/ render=none pose_csv=poses.csv

User-facing errors (a missing asset, a bad input file, a wrong option) print one message and exit
with status 1 -- no traceback.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from edtn.assets import AssetError
from edtn.inference import run

EXIT_USER_ERROR = 1


@hydra.main(version_base="1.3", config_path="configs", config_name="infer")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (AssetError, FileNotFoundError, ValueError) as exc:
        kind = "missing file" if isinstance(exc, FileNotFoundError) else "error"
        print(f"infer.py: {kind}: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
