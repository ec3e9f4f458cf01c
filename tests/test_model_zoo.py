"""A sample of the torchvision model-zoo walk (``experiments/bench/model_zoo.py`` walks all of them).

Each model either prunes uniformly at 0.5, with the analytic cost exact, the pruning history
replaying to identical outputs, and one fine-tuning epoch with keep-best saved and reloaded to identical
outputs, or is refused with an :class:`amc.errors.AmcError` naming the module /
operator. The full table is ``experiments/bench/results/model_zoo.json``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments" / "bench" / "model_zoo.py"

# grouped convs (resnext, regnet), hard-swish + squeeze-excite + depthwise (mobilenet_v3_small),
# concatenations (densenet121), MBConv (efficientnet_b0); attention (vit) and channel shuffle are refused
SAMPLE = [
    ("resnext50_32x4d", "pruned", ""),
    ("regnet_x_400mf", "pruned", ""),
    ("mobilenet_v3_small", "pruned", ""),
    ("densenet121", "pruned", ""),
    ("efficientnet_b0", "pruned", ""),
    ("vit_b_16", "refused", r"module 'encoder\.layers\.encoder_layer_0\.self_attention' \(MultiheadAttention\)"),
    ("shufflenet_v2_x0_5", "refused", r"ShuffleNetV2.*while handling op ViewBackward0.*channel shuffle"),
]


@pytest.fixture(scope="module")
def zoo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("model_zoo_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize(("name", "status", "detail"), SAMPLE)
def test_classifier_prunes_and_replays_or_is_refused(zoo: ModuleType, name: str, status: str, detail: str) -> None:
    result = zoo.check_model(name, ratio=0.5, sizes=(32, 64, 224))
    assert result.status == status, result.detail
    if status == "pruned":
        assert result.groups > 0 and 0.2 < result.flops_ratio < 0.35 and result.params_ratio < 0.5
        if name.startswith(("resnext", "regnet")):
            assert result.grouped > 0, "groups tied to grouped convs must be found"
    else:
        assert result.detail.startswith("TraceError: ")
        assert re.search(detail, result.detail), result.detail


# timm, tiny inputs: depthwise convs, channels sliced and concatenated (ghostnet: the slices shrink in equal steps),
# and a model Torch-Pruning cannot keep consistent (dpn48b: refused with the error its pruned copy raised)
TIMM_SAMPLE = [
    ("ghostnet_050", "pruned", ""),
    ("dpn48b", "refused", r"DPN cannot be pruned consistently: .*fails with IndexError"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "status", "detail"), TIMM_SAMPLE)
def test_timm_model_prunes_and_replays_or_is_refused(zoo: ModuleType, name: str, status: str, detail: str) -> None:
    result = zoo.check_model(name, ratio=0.5, sizes=(32, 64), source="timm")
    assert result.status == status, result.detail
    if status == "pruned":
        assert result.groups > 0 and result.flops_ratio < 0.5 and result.params_ratio < 0.6
    else:
        assert re.search(detail, result.detail), result.detail
