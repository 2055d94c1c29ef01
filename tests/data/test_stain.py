"""Stain jitter and normalisation: range, determinism, fidelity to torchstain, blank tiles, the data path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from bcc_lightning.data.augment import AugmentConfig, augment
from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import render_image
from bcc_lightning.data.preprocess import Preprocess, to_pixels
from bcc_lightning.data.stain import StainNormaliser, hed_jitter, hsv_jitter
from bcc_lightning.utils.errors import UserError


def tiles(n: int = 6, size: int = 96, seed: int = 0) -> list[torch.Tensor]:
    return [F.pil_to_tensor(render_image(bool(i % 2), size, np.random.default_rng([seed, i]))) for i in range(n)]


def restain(image: torch.Tensor, scale: tuple[float, float, float]) -> torch.Tensor:
    """Another lab's stain: the haematoxylin, eosin and DAB amounts scaled (darker nuclei, paler cytoplasm...)."""
    from bcc_lightning.data.stain import _HED_FROM_RGB, _RGB_FROM_HED

    od = -torch.log(image.double().clamp(min=1).permute(1, 2, 0) / 255)
    out = 255 * torch.exp(-((od @ _HED_FROM_RGB) * torch.tensor(scale, dtype=torch.float64)) @ _RGB_FROM_HED)
    return out.clamp(0, 255).round().to(torch.uint8).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("jitter", [hed_jitter, hsv_jitter])
def test_jitter_stays_in_range_and_is_deterministic(jitter) -> None:
    image = tiles(1)[0]
    a = jitter(image, 0.2, torch.Generator().manual_seed(3))
    b = jitter(image, 0.2, torch.Generator().manual_seed(3))
    c = jitter(image, 0.2, torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == image.shape
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, image)
    assert torch.equal(jitter(image, 0.0, torch.Generator()), image)


def test_hed_jitter_at_zero_strength_shift_is_lossless() -> None:
    image = tiles(1)[0]
    assert torch.equal(hed_jitter(image, 1e-12, torch.Generator().manual_seed(0)), image)


def test_stain_augmentation_in_the_loader_is_seeded() -> None:
    image = tiles(1)[0]
    cfg = AugmentConfig(rot90=False, hflip=0, vflip=0, stain=0.1, hsv=0.05)
    names: list[str] = []
    first = augment(image, cfg, torch.Generator().manual_seed(9), names)
    assert names == ["hed", "hsv"] and torch.equal(first, augment(image, cfg, torch.Generator().manual_seed(9)))


def stained(seed: int, amounts: tuple[float, float] = (1.0, 1.0), size: int = 64) -> torch.Tensor:
    """A tile made from two known stain vectors (Macenko's H&E reference) and random stain amounts per pixel."""
    he = torch.tensor([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(2, size * size, generator=g, dtype=torch.float64) ** 2 * torch.tensor([[1.6], [0.9]])
    c = c * torch.tensor(amounts, dtype=torch.float64).view(2, 1)
    image = 240 * torch.exp(-(he @ c))
    return image.clamp(0, 255).round().to(torch.uint8).view(3, size, size)


def test_macenko_undoes_a_change_of_stain_amounts() -> None:
    normaliser = StainNormaliser("macenko").fit([stained(s) for s in range(4)])
    for seed in (10, 11):
        original, shifted = stained(seed), stained(seed, (1.5, 0.6))
        before = (shifted.double() - original.double()).abs().mean()
        after = (normaliser(shifted).double() - normaliser(original).double()).abs().mean()
        assert after < 0.25 * before


@pytest.mark.parametrize("method", ["reinhard"])
def test_normalisation_undoes_a_synthetic_stain_change(method: str) -> None:
    """Images of one lab and the same images restained by another end up close once both are normalised."""
    normaliser = StainNormaliser(method).fit(tiles(8, seed=1))
    originals = tiles(4, seed=2)
    shifted = [restain(t, (1.5, 0.7, 1.0)) for t in originals]

    def colour_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return float(np.mean([(x.double().mean(dim=(1, 2)) - y.double().mean(dim=(1, 2))).abs().mean()
                              for x, y in zip(a, b)]))

    before = colour_gap(shifted, originals)
    after = colour_gap([normaliser(t) for t in shifted], [normaliser(t) for t in originals])
    assert after < 0.5 * before
    assert normaliser.normalised == 8 and normaliser.passed_through == 0


def test_reinhard_matches_the_reference_lab_statistics() -> None:
    from torchstain.torch.utils.rgb2lab import rgb2lab

    reference = tiles(1, size=128, seed=5)[0]
    normaliser = StainNormaliser("reinhard").fit([reference])
    out = normaliser(restain(tiles(1, size=128, seed=6)[0], (1.4, 0.8, 1.1)))
    lab_ref, lab_out = rgb2lab(reference.float() / 255), rgb2lab(out.float() / 255)
    for channel in range(3):
        assert float(lab_out[channel].mean()) == pytest.approx(float(lab_ref[channel].mean()), abs=2.0)
        assert float(lab_out[channel].std()) == pytest.approx(float(lab_ref[channel].std()), rel=0.15, abs=1.0)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_blank_tiles_pass_through_and_are_counted(method: str) -> None:
    normaliser = StainNormaliser(method).fit(tiles(4))
    glass = torch.full((3, 64, 64), 245, dtype=torch.uint8)
    black = torch.zeros((3, 64, 64), dtype=torch.uint8)
    assert torch.equal(normaliser(glass), glass)
    assert normaliser(black).shape == black.shape
    assert normaliser.passed_through >= 1


def test_state_round_trip_and_bad_method() -> None:
    normaliser = StainNormaliser("macenko").fit(tiles(4))
    again = StainNormaliser.from_state(normaliser.state())
    image = tiles(1, seed=9)[0]
    assert torch.equal(again(image), normaliser(image))
    with pytest.raises(UserError, match="stain_norm must be one of"):
        StainNormaliser("vahadane")


def test_preprocessing_applies_it_everywhere_and_keys_the_cache(tmp_path: Path) -> None:
    state = StainNormaliser("reinhard").fit(tiles(4)).state()
    plain = Preprocess(img_size=48, mean=(0.5,) * 3, std=(0.5,) * 3)
    normed = Preprocess(img_size=48, mean=(0.5,) * 3, std=(0.5,) * 3, stain_norm=state)
    assert Preprocess.from_dict(normed.to_dict()) == normed and plain.fingerprint() != normed.fingerprint()
    image = Image.fromarray(tiles(1, seed=4)[0].permute(1, 2, 0).numpy())
    assert not torch.equal(to_pixels(image, plain), to_pixels(image, normed))
    for split in ("train", "val", "test"):
        for label, cls in enumerate("BM"):
            for i in range(2):
                path = tmp_path / "data" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(tiles(1, seed=label * 10 + i)[0].permute(1, 2, 0).numpy()).save(path)
    cache = tmp_path / "cache"
    a = BCCDataModule(tmp_path / "data", plain, num_workers=0, cache=cache).dataset("val").cache
    b = BCCDataModule(tmp_path / "data", normed, num_workers=0, cache=cache).dataset("val").cache
    assert a.path != b.path  # normalised pixels never come out of a plain cache (or the reverse)
    streamed = BCCDataModule(tmp_path / "data", normed, num_workers=0).dataset("val")[0][0]
    assert torch.equal(torch.from_numpy(np.array(b[0])).permute(2, 0, 1), streamed)
