"""The one ONNX exporter: its input forms, the TTA views and Reinhard stain normalisation inside the graph, Macenko's
refusal, and the parity check that covers the fast path and bcc-export alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcc_lightning.data.stain import StainNormaliser
from bcc_lightning.models.export import (
    GraphSpec,
    ReinhardNorm,
    check_parity,
    dihedral,
    export_graph,
    graph_spec_for,
    onnx_session,
)
from bcc_lightning.models.inference import onnx_bytes
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.models.views import dihedral_views, view_probabilities
from bcc_lightning.utils.errors import UserError

SIZE = 32


@pytest.fixture(scope="module")
def model() -> BCCClassifier:
    torch.manual_seed(0)
    return BCCClassifier({"name": "test_efficientnet", "pretrained": False, "img_size": SIZE, "dropout": 0.0},
                         {"name": "adam", "lr": 1e-3}, load_weights=False).eval()


def reinhard_state() -> dict:
    tiles = [torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
             for i in range(4)]
    return StainNormaliser("reinhard").fit(tiles).state()


def test_graph_views_are_the_tta_views() -> None:
    x = torch.arange(2 * 3 * 5 * 5).view(2, 3, 5, 5)
    assert all(torch.equal(a, b) for a, b in zip(dihedral(x), dihedral_views(x), strict=True))


@pytest.mark.parametrize("spec", [
    GraphSpec(input="uint8_nchw", outputs=("logit",)),  # the fast path's graph
    GraphSpec(),  # bcc-export's default: 0-1 floats in, probability and logit out
    GraphSpec(input="uint8_nhwc", views=8, temperature=1.7),  # a TTA point with its temperature
], ids=["fast_path", "export_default", "nhwc_tta"])
def test_one_exporter_matches_the_eager_path(model: BCCClassifier, spec: GraphSpec) -> None:
    parity = check_parity(model, onnx_session(export_graph(model, spec)), spec)
    assert parity["passed"] and parity["max_abs_diff"] < 1e-5, parity


def test_the_fast_path_uses_the_same_exporter(model: BCCClassifier) -> None:
    assert onnx_bytes(model, SIZE) == export_graph(model, GraphSpec(input="uint8_nchw", outputs=("logit",)))


def test_a_wrong_graph_fails_the_parity_check(model: BCCClassifier) -> None:
    spec = GraphSpec(input="uint8_nchw", outputs=("prob_malignant",), temperature=2.0)
    wrong = onnx_session(export_graph(model, GraphSpec(input="uint8_nchw", outputs=("prob_malignant",))))
    assert not check_parity(model, wrong, spec)["passed"]  # T = 1 in the graph, T = 2 expected


def test_reinhard_in_the_graph_is_torchstains_map(model: BCCClassifier) -> None:
    state = reinhard_state()
    pixels = torch.randint(20, 236, (3, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    blank = torch.full((1, 3, SIZE, SIZE), 250, dtype=torch.uint8)  # glass: passes through unchanged
    batch = torch.cat([pixels, blank])
    normaliser = StainNormaliser.from_state(state)
    expected = torch.stack([normaliser(p) for p in batch]).float()
    assert torch.equal(ReinhardNorm(state)(batch.float()), expected)
    spec = GraphSpec(input="uint8_nchw", stain_norm=state)
    parity = check_parity(model, onnx_session(export_graph(model, spec)), spec, stain_norm=state)
    assert parity["passed"] and parity["max_abs_diff"] < 1e-5, parity


def test_macenko_is_refused_unless_the_graph_goes_without_it(model: BCCClassifier) -> None:
    from dataclasses import replace

    macenko = {"method": "macenko", "he": [[0.5, 0.1], [0.7, 0.8], [0.4, 0.3]], "max_c": [1.9, 1.0]}
    stained = BCCClassifier({"name": "test_efficientnet", "pretrained": False, "img_size": SIZE}, {"name": "adam"},
                            preprocess=replace(model.preprocess, stain_norm=macenko).to_dict(),
                            load_weights=False).eval()
    with pytest.raises(UserError, match="without_stain_norm=true"):
        graph_spec_for(stained, {"threshold": 0.5}, tta=False)
    assert graph_spec_for(stained, {"threshold": 0.5}, tta=False, without_stain_norm=True).stain_norm is None
    reinhard = replace(model.preprocess, stain_norm=reinhard_state())
    stained.preprocess = reinhard
    assert graph_spec_for(stained, {"threshold": 0.5, "temperature": 1.5}, tta=True).stain_norm == reinhard.stain_norm


def test_probabilities_are_float64_from_the_logit() -> None:
    probs, spread = view_probabilities(torch.tensor([[20.0], [-20.0], [0.0]]))
    assert probs.dtype == torch.float64 and spread is None
    assert probs[0] < 1.0 and probs[0] == pytest.approx(1 - np.exp(-20.0), abs=1e-15)  # float32 would give 1.0
    assert probs[1] > 0 and probs[2] == 0.5


def test_user_errors_for_bad_specs() -> None:
    with pytest.raises(UserError, match="input must be one of"):
        GraphSpec(input="float16")
    with pytest.raises(UserError, match="temperature must be a positive number"):
        GraphSpec(temperature=0.0)
