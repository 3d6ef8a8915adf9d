"""The kit's weight-fill rules reproduce the manifests' checksums (first3 exactly, sum rtol 1e-9)."""
import json

import numpy as np
import pytest

from helpers.weight_fill import sine_fill, splitmix_fill


def test_generator_and_vgg_sine_rule_matches_manifest(generator_kit):
    manifest = json.loads((generator_kit / "generator_manifest.json").read_text())
    entries = manifest["generator"]["entries"] + manifest["vgg19_features"]["entries"]
    assert len(entries) == 304 + 32
    for entry in entries:
        w = sine_fill(entry["key"], tuple(entry["shape"]))
        assert w.dtype == np.float32
        np.testing.assert_array_equal(w.ravel()[:3], np.float32(entry["fill_first3"]), err_msg=entry["key"])
        assert w.astype(np.float64).sum() == pytest.approx(entry["fill_sum"], rel=1e-9, abs=1e-12)


def test_deca_splitmix_rule_matches_manifest(flame_deca_kit):
    manifest = json.loads((flame_deca_kit / "deca_encoder_manifest.json").read_text())
    keys = [e["key"] for e in manifest["entries"]]
    bn = {k[: -len(".running_mean")] for k in keys if k.endswith(".running_mean")}
    for entry in manifest["entries"]:
        w = splitmix_fill(entry["key"], tuple(entry["shape"]), bn)
        check = entry["fill_check"]
        np.testing.assert_array_equal(w.ravel()[:3].astype(np.float64), check["first3"], err_msg=entry["key"])
        assert w.astype(np.float64).sum() == pytest.approx(check["sum_float64"], rel=1e-9, abs=1e-12)
