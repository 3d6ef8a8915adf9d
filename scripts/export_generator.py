"""Export the generator weights of a training checkpoint (ours, or the authors' Lightning .ckpt).

    python scripts/export_generator.py outputs/train_ag/run/checkpoints/last.pt generator.pt
    python scripts/export_generator.py last.pt gen_state.pt --format bare --weights generator

``--format edtn`` (default) writes ``{'format': 'edtn-generator/1', 'generator', 'generator_ema',
'generator_config'}`` without any training state; ``--format bare`` writes one plain state dict
(304 keys) of the chosen weights. Loads back with ``anime_generator.checkpoint.load_generator``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/<name>.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from anime_generator.checkpoint import (OUR_FORMAT, check_state_dict, checkpoint_filter_fn,  # noqa: E402
                                        load_checkpoint_file)
from anime_generator.config import GeneratorConfig  # noqa: E402
from anime_generator.model import AnimeGenerator  # noqa: E402
from infra.files import atomic_save, check_outputs_distinct  # noqa: E402
from infra.runtime import exit_on_user_error  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="training checkpoint (last.pt / epoch_XXXX.pt) or authors' .ckpt")
    parser.add_argument("output", help="file to write (atomically)")
    parser.add_argument("--format", choices=("edtn", "bare"), default="edtn",
                        help="edtn: our checkpoint format without training state; bare: one state dict")
    parser.add_argument("--weights", choices=("ema", "generator"), default="ema",
                        help="which weights a bare export holds (EMA by default)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="ONLY for a checkpoint you created: allow a full unpickle (can run code "
                             "hidden in the file); by default it loads with torch weights_only")
    return parser.parse_args(argv)


def _has_ema(obj) -> bool:
    if not isinstance(obj, dict):
        return False
    if "format" in obj:
        return bool(obj.get("generator_ema"))
    return any("generator_ema." in k for k in obj.get("state_dict", {}))


def export(checkpoint: str | Path, output: str | Path, fmt: str = "edtn", weights: str = "ema",
           trust_checkpoint: bool = False) -> dict:
    """Write the export and return a summary (keys, parameters, config source)."""
    check_outputs_distinct({"output": output}, {"checkpoint": checkpoint})
    obj = load_checkpoint_file(checkpoint, map_location="cpu", trust_checkpoint=trust_checkpoint)
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("generator_config"), dict):
        config = GeneratorConfig.from_dict(obj["generator_config"])
    model = AnimeGenerator(config)
    chosen = checkpoint_filter_fn(obj, use_ema=weights == "ema")
    check_state_dict(chosen, model)
    if fmt == "bare":
        out = chosen
    else:
        generator = checkpoint_filter_fn(obj, use_ema=False)
        check_state_dict(generator, model)
        out = {"format": OUR_FORMAT, "generator": generator,
               "generator_ema": checkpoint_filter_fn(obj, use_ema=True) if _has_ema(obj) else None,
               "generator_config": model.config.to_dict()}
    atomic_save(out, output)
    return {"output": str(output), "format": fmt, "weights": weights, "keys": len(chosen),
            "parameters": int(sum(v.numel() for v in chosen.values()))}


def main(argv=None) -> None:
    args = parse_args(argv)
    print(json.dumps(export(args.checkpoint, args.output, args.format, args.weights,
                            args.trust_checkpoint), indent=2))


if __name__ == "__main__":
    exit_on_user_error("export_generator.py", main)
