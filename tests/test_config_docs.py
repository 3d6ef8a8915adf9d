"""Every config key of every entry point is documented: a comment beside it in its YAML tree (on
its line or on the comment line right above), or a mention in the README."""
from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import get_type_hints

import pytest

REPO = Path(__file__).resolve().parents[1]
KEY_LINE = re.compile(r"^\s*([A-Za-z_]\w*)\s*:(.*)$")


def leaf_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted paths of the non-dataclass fields of a (nested) dataclass schema."""
    hints = get_type_hints(schema)
    out = []
    for f in fields(schema):
        kind = hints[f.name]
        if is_dataclass(kind):
            out += leaf_keys(kind, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def commented_yaml_keys(files: list[Path]) -> set[str]:
    """Key names that carry a comment on their line or on the line above, in these YAML files."""
    keys = set()
    for file in files:
        previous = ""
        for line in file.read_text().splitlines():
            match = KEY_LINE.match(line)
            if match and ("#" in match.group(2) or previous.lstrip().startswith("#")):
                keys.add(match.group(1))
            previous = line
    return keys


def _schemas():
    from anime_generator.train_config import TrainAGConfig
    from edtn.config import TrainConfig
    from reenact.config import InferConfig

    return [("infer", InferConfig, [REPO / "configs" / "infer.yaml"]),
            ("train", TrainConfig, sorted((REPO / "configs" / "edtn").rglob("*.yaml"))),
            ("train_ag", TrainAGConfig, sorted((REPO / "configs" / "anime_generator").rglob("*.yaml")))]


@pytest.mark.parametrize("name", ["infer", "train", "train_ag"])
def test_every_config_key_is_documented(name):
    _, schema, files = next(s for s in _schemas() if s[0] == name)
    readme = (REPO / "README.md").read_text()
    commented = commented_yaml_keys(files)
    undocumented = [key for key in leaf_keys(schema)
                    if key.rsplit(".", 1)[-1] not in commented and f"`{key}" not in readme]
    assert not undocumented, f"{name}: keys with neither a YAML comment nor a README mention: {undocumented}"


def test_the_checker_sees_a_missing_comment(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("# about a\na: 1\nb: 2\nc: 3   # about c\n")
    assert commented_yaml_keys([yaml]) == {"a", "c"}
