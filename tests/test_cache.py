"""The per-image score cache: keys, round trips, corrupt entries, atomic writes, the Auditor."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from conftest import write_images
from informer_audit.adapters.fd import FiniteDifferenceIxG
from informer_audit.audit import Auditor
from informer_audit.cache import ScoreCache, cache_key, content_sha256, key_document
from informer_audit.model import OnnxClassifier
from informer_audit.scorers import InformerScorer, build_scorer

FIELDS = {
    "model_sha256": "ab" * 32,
    "image_sha256": "cd" * 32,
    "kind": "informer",
    "settings": {"name": "fd", "patch_size": 16, "scheme": "central", "step": 0.001},
    "classes": ["A", "B", "C"],
    "preprocessing": {"image_size": [16, 16], "mean": [0.5], "std": [0.25]},
}
SHAPES = {"logits": (3,), "dist": (3, 3), "d": (3,)}


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"logits": rng.normal(size=3), "dist": rng.uniform(0, 2, (3, 3)), "d": rng.random(3)}


def test_round_trip_is_exact_and_lands_in_a_sharded_folder(tmp_path):
    cache = ScoreCache(tmp_path / "c")
    doc = key_document(**FIELDS)
    stored = arrays()
    assert cache.get(doc, SHAPES) is None  # nothing yet: a plain miss
    assert cache.put(doc, stored)
    back = cache.get(doc, SHAPES)
    assert back is not None and set(back) == set(stored)
    for name, value in stored.items():
        assert back[name].dtype == np.float64
        np.testing.assert_array_equal(back[name], value)  # bit for bit
    key = cache_key(**FIELDS)
    assert cache.path(doc) == tmp_path / "c" / key[:2] / f"{key}.npz"
    assert cache.path(doc).is_file() and cache.n_corrupt == 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_sha256", "ef" * 32),
        ("image_sha256", "01" * 32),
        ("kind", "tta"),
        ("settings", {"name": "fd", "patch_size": 32, "scheme": "central", "step": 0.001}),
        ("settings", {"name": "lime", "num_samples": 1000}),
        ("classes", ["A", "C", "B"]),
        ("classes", ["A", "B"]),
        ("preprocessing", {"image_size": [16, 16], "mean": [0.4], "std": [0.25]}),
    ],
)
def test_every_key_component_changes_the_key(field, value):
    assert cache_key(**{**FIELDS, field: value}) != cache_key(**FIELDS)


def test_key_is_canonical():
    reordered = {
        **FIELDS,
        "settings": {"step": 0.001, "scheme": "central", "patch_size": np.int64(16), "name": "fd"},
        "preprocessing": {"std": (0.25,), "mean": np.array([0.5]), "image_size": [16, 16]},
    }
    assert cache_key(**reordered) == cache_key(**FIELDS)
    for bad in ("", "two words", 3):  # a registered scorer may name its own kind
        with pytest.raises(ValueError, match="kind"):
            key_document(**{**FIELDS, "kind": bad})


def _corrupt_cases(cache, doc, path):
    yield "garbage bytes", lambda: path.write_bytes(b"not a zip file at all")
    yield "truncated", lambda: path.write_bytes(path.read_bytes()[:40])
    yield "empty", lambda: path.write_bytes(b"")

    def plain_npy():
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3))

    yield "a plain .npy", plain_npy

    def pickled():  # an object array: loading it would need pickle, which is refused
        with open(path, "wb") as fh:
            np.savez(fh, logits=np.array([object()], dtype=object), _key=np.asarray(doc))

    yield "object array", pickled

    def wrong_shape():
        cache.put(doc, {**arrays(), "dist": np.zeros((2, 2))})

    yield "wrong shape", wrong_shape

    def missing():
        cache.put(doc, {"logits": np.zeros(3), "d": np.zeros(3)})

    yield "missing array", missing

    def not_finite():
        cache.put(doc, {**arrays(), "d": np.array([0.1, np.nan, 0.2])})

    yield "NaN", not_finite


def test_corrupt_entries_are_misses_logged_and_then_overwritten(tmp_path, caplog):
    cache = ScoreCache(tmp_path)
    doc = key_document(**FIELDS)
    path = cache.path(doc)
    n = 0
    for name, damage in _corrupt_cases(cache, doc, path):
        assert cache.put(doc, arrays())
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="informer_audit.cache"):
            assert cache.get(doc, SHAPES) is None, name
        n += 1
        assert cache.n_corrupt == n, name
        assert "ignored (recomputed)" in caplog.text, name
        assert cache.put(doc, arrays(1))  # the next store replaces the damaged entry
        np.testing.assert_array_equal(cache.get(doc, SHAPES)["d"], arrays(1)["d"])


def test_an_entry_under_another_key_is_a_miss(tmp_path):
    cache = ScoreCache(tmp_path)
    doc, other = key_document(**FIELDS), key_document(**{**FIELDS, "kind": "probs"})
    cache.put(doc, arrays())
    cache.path(other).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cache.path(doc), cache.path(other))  # e.g. a file copied by hand
    assert cache.get(other, SHAPES) is None and cache.n_corrupt == 1


def test_writes_are_atomic_and_failures_leave_nothing_behind(tmp_path, monkeypatch):
    cache = ScoreCache(tmp_path)
    docs = [key_document(**{**FIELDS, "image_sha256": f"{i:064x}"}) for i in range(5)]
    for i, doc in enumerate(docs):
        cache.put(doc, arrays(i))
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 5 and all(f.endswith(".npz") and not f.startswith(".") for f in files)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    assert not cache.put(docs[0], arrays(9))  # logged, not raised
    assert cache.n_write_errors == 1
    assert not [p for p in tmp_path.rglob("*.tmp")]
    np.testing.assert_array_equal(cache.get(docs[0], SHAPES)["d"], arrays(0)["d"])  # untouched
    with pytest.raises(ValueError, match="must not start"):
        cache.put(docs[0], {"_key": np.zeros(1)})


# -- the Auditor reads the cache instead of explaining ------------------------------------------
class CountingFD(FiniteDifferenceIxG):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def explain(self, model, x, **kw):
        self.calls += len(x)
        return super().explain(model, x, **kw)


def _fields(r):
    return (r.key, r.error, r.logits, r.probs, r.dist, r.d, r.score)


def test_auditor_scores_each_image_once_and_cached_results_are_identical(tmp_path, tiny_model):
    path, _ = tiny_model(hidden=5)
    model = OnnxClassifier(path, device="cpu")
    images = write_images(tmp_path / "imgs", 6)
    items = [(p.name, p) for p in images]
    cache = ScoreCache(tmp_path / "cache")
    fd = CountingFD(patch_size=4)
    first = Auditor(model, InformerScorer(fd), cache=cache, images_per_chunk=4)
    fresh = list(first.run(items))
    assert fd.calls == 6 and (first.cache_hits, first.cache_misses) == (0, 6)

    forward = model.n_forward
    again = Auditor(model, InformerScorer(fd), cache=cache, images_per_chunk=4)
    cached = list(again.run(items))
    assert fd.calls == 6 and model.n_forward == forward  # nothing explained, nothing run
    assert (again.cache_hits, again.cache_misses) == (6, 0)
    for a, b in zip(fresh, cached, strict=True):
        for x, y in zip(_fields(a), _fields(b), strict=True):
            np.testing.assert_array_equal(x, y)

    # the key is the file's content: a renamed copy hits, an edited image misses
    shutil.copy(images[0], tmp_path / "renamed.png")
    write_images(tmp_path / "other", 1, seed=9)
    moved = [("renamed", tmp_path / "renamed.png"), ("edited", tmp_path / "other" / "img_000.png")]
    third = Auditor(model, InformerScorer(fd), cache=cache)
    list(third.run(moved))
    assert (third.cache_hits, third.cache_misses) == (1, 1) and fd.calls == 7

    # other settings or classes: other entries
    assert content_sha256(images[0]) != content_sha256(tmp_path / "other" / "img_000.png")
    sub = Auditor(model, InformerScorer(fd), ["C", "A"], cache=cache)
    list(sub.run(items[:2]))
    assert sub.cache_misses == 2 and fd.calls == 9


def test_keep_maps_bypasses_cache_reads(tmp_path, tiny_model):
    path, _ = tiny_model(hidden=5)
    model = OnnxClassifier(path, device="cpu")
    items = [(p.name, p) for p in write_images(tmp_path / "imgs", 3)]
    cache = ScoreCache(tmp_path / "cache")
    fd = CountingFD(patch_size=4)
    list(Auditor(model, InformerScorer(fd), cache=cache).run(items))
    with_maps = list(Auditor(model, InformerScorer(fd), cache=cache, keep_maps=True).run(items))
    assert fd.calls == 6 and all(r.maps is not None for r in with_maps)


def test_failed_images_are_not_cached(tmp_path, tiny_model):
    path, _ = tiny_model(hidden=5)
    model = OnnxClassifier(path, device="cpu")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cache = ScoreCache(tmp_path / "cache")
    for _ in range(2):
        scorer = InformerScorer(FiniteDifferenceIxG(patch_size=4))
        (r,) = Auditor(model, scorer, cache=cache).run([("b", bad)])
        assert not r.ok
    missing = Auditor(model, InformerScorer(FiniteDifferenceIxG(patch_size=4)), cache=cache)
    (r,) = missing.run([("m", tmp_path / "missing.png")])
    assert "not found" in str(r.error) or "No such file" in str(r.error)
    assert not list((tmp_path / "cache").rglob("*.npz"))


@pytest.mark.parametrize("method, kind", [("entropy", "probs"), ("msp", "probs"), ("tta", "tta")])
def test_baseline_auditors_share_and_reuse_entries(tmp_path, tiny_model, method, kind):
    path, _ = tiny_model(hidden=5)
    model = OnnxClassifier(path, device="cpu")
    items = [(p.name, p) for p in write_images(tmp_path / "imgs", 4)]
    cache = ScoreCache(tmp_path / "cache")
    tta = {"copies": 3} if method == "tta" else None
    fresh = list(Auditor(model, build_scorer(method, tta=tta), cache=cache).run(items))
    forward = model.n_forward
    again = Auditor(model, build_scorer(method, tta=tta), cache=cache)
    cached = list(again.run(items))
    assert again.cache_hits == 4 and model.n_forward == forward
    for a, b in zip(fresh, cached, strict=True):
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.probs, b.probs)
    files = list((tmp_path / "cache").rglob("*.npz"))
    assert len(files) == 4
    with np.load(files[0], allow_pickle=False) as npz:
        assert f'"kind":"{kind}"' in str(npz["_key"])
    if kind == "probs":  # entropy and MSP are both functions of the cached logits
        other = "msp" if method == "entropy" else "entropy"
        shared = Auditor(model, build_scorer(other), cache=cache)
        list(shared.run(items))
        assert shared.cache_hits == 4
