"""Low-rank image approximation with a truncated SVD, one colour channel at a time.

For a channel X (h x w, float) with SVD X = U S V^T, the best rank-k approximation in the
Frobenius / spectral norm (Eckart-Young) is X_k = U[:, :k] diag(S[:k]) V[:, :k]^T. Storing it
needs k * (h + w + 1) numbers instead of h * w, the storage ratio printed below.

Usage::

    python -m tools.faq.svd_reconstruct IMAGE --ranks 5 20 50 [--output-dir DIR]

Writes ``DIR/<image stem>_svd.png`` (original and one panel per rank, each titled with the
rank and PSNR), prints a table and, when called as ``main(argv)``, returns the numbers.
PSNR uses a peak of 255 and is computed on the reconstruction clipped to [0, 255] but not
rounded, so a full-rank reconstruction shows float round-off only (> 100 dB), not infinity.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: only ever writes files
import matplotlib.pyplot as plt  # noqa: E402

from models.errors import InputError
from tools._common import add_debug_flag, run_cli

PEAK = 255.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("image", type=Path, help="image file readable by cv2.imread (colour or grayscale)")
    p.add_argument("--ranks", type=int, nargs="+", default=[5, 20, 50], help="ranks k to keep (>= 1)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/svd"), help="where the PNG goes")
    return p


def read_image(path: Path) -> np.ndarray:
    """Read an 8-bit image as float64, (h, w) for grayscale or (h, w, 3) BGR for colour."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: '{path}' does not exist (pass the path of an image file)")
    # ANYCOLOR keeps grayscale as one channel and drops alpha; 16-bit input is converted to 8 bits
    img = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise InputError(f"image: cv2 could not decode '{path}' (corrupt or not an image format cv2 reads)")
    return img.astype(np.float64)


def channel_svds(img: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Thin SVD of every channel: [(U (h, r), S (r,), Vt (r, w))] with r = min(h, w)."""
    chans = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    return [np.linalg.svd(ch, full_matrices=False) for ch in chans]


def reconstruct(svds, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """Rank-k reconstruction with the same shape as the image, unclipped float64."""
    chans = [(U[:, :k] * S[:k]) @ Vt[:k] for U, S, Vt in svds]
    return chans[0] if len(shape) == 2 else np.stack(chans, axis=-1)


def psnr(ref: np.ndarray, rec: np.ndarray, peak: float = PEAK) -> float:
    """10 log10(peak^2 / MSE) in dB; inf when identical."""
    mse = float(np.mean((ref - rec) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def storage_ratio(k: int, h: int, w: int) -> float:
    """Numbers kept by a rank-k factorisation (k columns of U, k rows of V^T, k singular values)
    relative to the h * w pixels of one channel."""
    return k * (h + w + 1) / (h * w)


def check_ranks(ranks: list[int], h: int, w: int) -> None:
    for k in ranks:
        if k < 1:
            raise InputError(f"--ranks: {k} is not a valid rank; use integers >= 1")
        if k > min(h, w):
            raise InputError(
                f"--ranks: {k} is larger than min(height, width) = {min(h, w)} of the {h}x{w} image, "
                f"which is the largest possible rank; use ranks <= {min(h, w)}"
            )


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out if out.ndim == 2 else out[..., ::-1]  # cv2 is BGR, matplotlib RGB


def save_panels(img: np.ndarray, recs: list[tuple[int, float, np.ndarray]], out: Path) -> None:
    """One row: original, then each reconstruction titled 'rank k, PSNR x dB'."""
    h, w = img.shape[:2]
    n = 1 + len(recs)
    panel_w = 3.2
    fig, axes = plt.subplots(1, n, figsize=(panel_w * n, panel_w * h / w + 0.6), squeeze=False)
    panels = [("original", img)] + [(f"rank {k}, PSNR {p:.1f} dB", r) for k, p, r in recs]
    for ax, (title, im) in zip(axes[0], panels, strict=True):
        ax.imshow(to_rgb_uint8(im), cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Returns {"image", "shape", "figure", "results": [{"rank", "psnr_db", "storage_ratio"}, ...]}."""
    args = add_debug_flag(get_args_parser()).parse_args(argv)
    img = read_image(args.image)
    h, w = img.shape[:2]
    ranks = sorted(set(args.ranks))
    check_ranks(ranks, h, w)

    svds = channel_svds(img)
    results, recs = [], []
    for k in ranks:
        rec = np.clip(reconstruct(svds, k, img.shape), 0.0, PEAK)
        p = psnr(img, rec)
        results.append({"rank": k, "psnr_db": p, "storage_ratio": storage_ratio(k, h, w)})
        recs.append((k, p, rec))

    out = args.output_dir / f"{args.image.stem}_svd.png"
    save_panels(img, recs, out)

    n_ch = 1 if img.ndim == 2 else img.shape[2]
    print(f"{args.image}: {h}x{w}, {n_ch} channel(s); storage ratio = k (h + w + 1) / (h w) per channel")
    print(f"{'rank':>6} {'PSNR [dB]':>10} {'storage':>9}")
    for r in results:
        print(f"{r['rank']:>6d} {r['psnr_db']:>10.2f} {r['storage_ratio']:>9.4f}")
    print(f"wrote {out}")
    return {"image": str(args.image), "shape": img.shape, "figure": str(out), "results": results}


if __name__ == "__main__":
    run_cli(main)
