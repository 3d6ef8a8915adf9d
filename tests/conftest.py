"""Shared pytest fixtures: where the read-only conformance kit lives, and tiny helpers.

``../shared/reference`` (beside the checkout) holds the authors' public files and the parity
vectors produced by the original code. Tests read it in place. When it is missing outside CI the
dependent tests are skipped with a loud reason; in CI (``CI=true``) a missing kit is an error.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDTN_SHARED", REPO_ROOT.parent / "shared")).resolve()
REFERENCE = SHARED / "reference"


def _require(path: Path) -> Path:
    if not path.exists():
        message = (f"!!! conformance kit missing: {path} !!! "
                   "(expected ../shared/reference beside the checkout, or set EDTN_SHARED)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference``."""
    return _require(REFERENCE)


@pytest.fixture(scope="session")
def flame_deca_kit(reference_dir) -> Path:
    """``../shared/reference/parity/flame_deca``."""
    return _require(reference_dir / "parity" / "flame_deca")


@pytest.fixture(scope="session")
def generator_kit(reference_dir) -> Path:
    """``../shared/reference/parity/generator``."""
    return _require(reference_dir / "parity" / "generator")


@pytest.fixture(scope="session")
def authors_dir(reference_dir) -> Path:
    """``../shared/reference/authors`` (EDTN.pt, basis, vox_deca codes, example video...)."""
    return _require(reference_dir / "authors")


@pytest.fixture(scope="session")
def deca_dir(reference_dir) -> Path:
    """``../shared/reference/deca`` (landmark embedding, head template, face photos)."""
    return _require(reference_dir / "deca")


@pytest.fixture(scope="session")
def synthetic_flame_path(flame_deca_kit) -> Path:
    """Full-size synthetic FLAME model (real topology, synthetic blendshapes)."""
    return _require(flame_deca_kit / "synthetic_generic_model.pkl")


@pytest.fixture(scope="session")
def landmark_embedding_path(deca_dir) -> Path:
    return _require(deca_dir / "landmark_embedding.npy")


@pytest.fixture(autouse=True)
def _isolated_asset_home(tmp_path_factory, monkeypatch):
    """Every test sees an empty asset cache unless it sets one up itself."""
    home = tmp_path_factory.mktemp("edtn_home")
    monkeypatch.setenv("EDTN_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))


STANDIN_GENERATOR_SIZE = 64   # stand-in generator resolution for fast tests (the weights are size-free)


@pytest.fixture(scope="session")
def standin_kit(tmp_path_factory, deca_dir, authors_dir) -> Path:
    """A stand-in asset folder (scripts/make_standin_assets.py) with the authors' public EDTN.pt and
    basis copied in and 64² stand-in generators; use it as ``EDTN_HOME``."""
    from reenact.standin import make_standin_kit

    out = tmp_path_factory.mktemp("standin_kit") / "assets"
    make_standin_kit(out, deca_dir / "head_template.obj", deca_dir / "landmark_embedding.npy",
                     edtn=authors_dir / "EDTN.pt", transform_matrix=authors_dir / "transform_matrix_08_30.npy",
                     generator_size=STANDIN_GENERATOR_SIZE, progress=False)
    return out
