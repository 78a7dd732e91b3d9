"""tools/faq/svd_reconstruct.py: truncated per-channel SVD of an image, PSNR and storage ratio."""

import math

import cv2
import numpy as np
import pytest

from tools.faq import svd_reconstruct as svd


def _write(path, img):
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def colour_image(tmp_path):
    """24x32 BGR image: smooth gradients plus noise, so every rank adds information."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:32]
    base = np.stack([4 * xx + 2 * yy, 8 * yy, 120 + 60 * np.sin(xx / 3.0)], axis=-1)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return _write(tmp_path / "img.png", img), img


def test_full_rank_is_exact_and_psnr_grows_with_rank(colour_image, tmp_path, capsys):
    path, _ = colour_image
    res = svd.main([str(path), "--ranks", "1", "3", "8", "24", "--output-dir", str(tmp_path / "out")])
    psnrs = [r["psnr_db"] for r in res["results"]]
    assert [r["rank"] for r in res["results"]] == [1, 3, 8, 24]
    assert all(a < b for a, b in zip(psnrs, psnrs[1:], strict=False)), psnrs
    assert psnrs[-1] > 100  # rank 24 = min(24, 32): only float round-off remains
    assert psnrs[0] < 40  # rank 1 of a noisy image is visibly lossy
    assert (tmp_path / "out" / "img_svd.png").is_file()
    assert res["figure"].endswith("img_svd.png")
    assert "PSNR" in capsys.readouterr().out


def test_storage_ratio_by_hand(colour_image, tmp_path):
    path, _ = colour_image
    res = svd.main([str(path), "--ranks", "5", "--output-dir", str(tmp_path)])
    # 24x32 image, rank 5: 5 * (24 + 32 + 1) / (24 * 32) = 285 / 768
    assert res["results"][0]["storage_ratio"] == pytest.approx(285 / 768)
    assert svd.storage_ratio(1, 10, 10) == pytest.approx(21 / 100)


def test_rank_one_image_recovered_at_rank_one(tmp_path):
    # outer product of two positive vectors, integer valued and inside [0, 255]
    u = np.arange(1, 17, dtype=np.float64)  # 1..16
    v = np.arange(1, 16, dtype=np.float64)  # 1..15
    img = np.outer(u, v).astype(np.uint8)  # max 240, grayscale, exactly rank 1
    path = _write(tmp_path / "outer.png", img)
    res = svd.main([str(path), "--ranks", "1", "--output-dir", str(tmp_path)])
    assert res["shape"] == (16, 15)  # read as one channel
    assert res["results"][0]["psnr_db"] > 100

    # same thing through the functions: the reconstruction equals the image
    rec = svd.reconstruct(svd.channel_svds(img.astype(np.float64)), 1, img.shape)
    np.testing.assert_allclose(rec, img, atol=1e-9)


def test_psnr_by_hand():
    a = np.zeros((2, 2))
    b = np.array([[0.0, 0.0], [0.0, 2.0]])  # MSE = 4 / 4 = 1 -> 10 log10(255^2) = 48.13 dB
    assert svd.psnr(a, b) == pytest.approx(20 * math.log10(255))
    assert svd.psnr(a, a) == math.inf


def test_bad_inputs(tmp_path, colour_image):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        svd.main([str(tmp_path / "nope.png"), "--output-dir", str(tmp_path)])
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        svd.main([str(bad), "--output-dir", str(tmp_path)])
    path, _ = colour_image
    with pytest.raises(ValueError, match=r"25 is larger than min\(height, width\) = 24"):
        svd.main([str(path), "--ranks", "5", "25", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--ranks"):
        svd.main([str(path), "--ranks", "0", "--output-dir", str(tmp_path)])
