"""Adapters declare their own options: a third-party adapter's reach the CLI like the built-ins'."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest

from conftest import calibrate, invoke, labelled_folder
from informer_audit import saliency
from informer_audit.saliency import AdapterOption, SaliencyAdapter

SEEN: list[float] = []


class ToyAdapter(SaliencyAdapter):
    """Class k's map is the image raised to the power k + 1, times ``gain``."""

    name: ClassVar[str] = "toy"
    access: ClassVar[str] = "scores"
    options: ClassVar[tuple[AdapterOption, ...]] = (
        AdapterOption("--toy-gain", "gain", float, "map scale [1].", min=0),
    )

    def __init__(self, gain: float = 1.0) -> None:
        SEEN.append(gain)
        self._params: dict[str, Any] = {"gain": gain}
        self.gain = gain

    def explain(self, model, x, *, logits=None, progress=None):
        k = len(model.card.class_names)
        flat = np.abs(x.reshape(len(x), -1).astype(np.float64)) + 0.1
        return np.stack([self.gain * flat ** (j + 1) for j in range(k)], axis=1)


@pytest.fixture
def toy(monkeypatch):
    saliency.available_adapters()  # the built-ins first
    monkeypatch.setitem(saliency._REGISTRY, "toy", ToyAdapter)
    SEEN.clear()


def test_a_registered_adapter_option_is_offered_and_reaches_the_adapter(tmp_path, toy):
    help_text = invoke("calibrate", "--help").output
    assert "--toy-gain" in help_text and "toy: map scale [1]." in help_text
    env = labelled_folder(tmp_path)
    out = tmp_path / "monitor.json"
    r = calibrate(env, out, saliency=("--saliency", "toy", "--toy-gain", 3))
    assert r.exit_code == 0, r.output
    assert SEEN and SEEN[-1] == 3.0
    assert json.loads(out.read_text())["binding"]["saliency"] == {"name": "toy", "gain": 3.0}


def test_an_option_of_another_adapter_is_refused(tmp_path, toy):
    env = labelled_folder(tmp_path)
    r = calibrate(env, tmp_path / "m.json", saliency=("--saliency", "fd", "--toy-gain", 3))
    assert r.exit_code == 2 and "--toy-gain applies to --saliency toy, not fd" in r.output
    r = calibrate(env, tmp_path / "m.json", saliency=("--saliency", "toy", "--patch-size", 8))
    assert r.exit_code == 2 and "--patch-size applies to --saliency fd, not toy" in r.output
