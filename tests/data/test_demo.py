import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcc_lightning.data.demo import MARKER, generate, is_demo_root
from bcc_lightning.utils.errors import UserError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_per_class=6, size=48, seed=3)
    b = generate(tmp_path / "b", n_per_class=6, size=48, seed=3)
    c = generate(tmp_path / "c", n_per_class=6, size=48, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_split_and_balance(demo_root: Path) -> None:
    counts = {(s, c): len(list((demo_root / s / c).glob("*.png"))) for s in ("train", "val", "test") for c in "BM"}
    assert counts == {("train", "B"): 14, ("train", "M"): 14, ("val", "B"): 3, ("val", "M"): 3,
                      ("test", "B"): 3, ("test", "M"): 3}
    names = [p.name for p in demo_root.rglob("*.png")]
    assert len(names) == len(set(names)) == 40  # each source image in exactly one split
    assert is_demo_root(demo_root) and "SYNTHETIC" in (demo_root / MARKER).read_text()


def test_mean_colour_does_not_give_the_answer(tmp_path: Path) -> None:
    """The best threshold on any mean channel or brightness, fitted on train, must score far below the CNN."""
    root = generate(tmp_path / "d", n_per_class=60, size=64, seed=0)

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for label, cls in enumerate("BM"):
            for path in sorted((root / split / cls).glob("*.png")):
                rgb = np.asarray(Image.open(path), dtype=np.float64).reshape(-1, 3)
                rows.append([*rgb.mean(0), rgb.mean(), rgb.std()])
                labels.append(label)
        return np.array(rows), np.array(labels)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    best_test = 0.0
    for j in range(x_train.shape[1]):
        candidates = np.unique(x_train[:, j])
        train_acc = [max(np.mean((x_train[:, j] >= t) == y_train), np.mean((x_train[:, j] < t) == y_train))
                     for t in candidates]
        k = int(np.argmax(train_acc))
        t = candidates[k]
        direction = np.mean((x_train[:, j] >= t) == y_train) >= np.mean((x_train[:, j] < t) == y_train)
        pred = (x_test[:, j] >= t) if direction else (x_test[:, j] < t)
        best_test = max(best_test, float(np.mean(pred == y_test)))
    assert best_test < 0.8, best_test  # the demo CNN reaches >= 0.9


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("precious")
    with pytest.raises(UserError, match="not a demo dataset"):
        generate(tmp_path / "mine", n_per_class=2, size=32)
    assert (tmp_path / "mine" / "thesis.docx").read_text() == "precious"


def test_reuses_same_settings_and_refuses_others(tmp_path: Path) -> None:
    root = generate(tmp_path / "d", n_per_class=2, size=32, seed=0)
    stamp = (root / MARKER).stat().st_mtime_ns
    generate(root, n_per_class=2, size=32, seed=0)
    assert (root / MARKER).stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="other settings"):
        generate(root, n_per_class=3, size=32, seed=0)
    generate(root, n_per_class=3, size=32, seed=0, overwrite=True)
    assert len(list(root.rglob("*.png"))) == 6
    assert not list(tmp_path.glob(".d.tmp-*"))
