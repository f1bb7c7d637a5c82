#!/usr/bin/env python
"""Build the broader training content as one compact file: natural photos from Debian wallpaper packages.

The GPU machine has no network and no Debian wallpaper packages, so the photos travel as one uncompressed
tar of already-compressed images (``cliphaze.train.content.load_content_pack`` reads it):

* ``manifest.json``: every image with its package, version, source file, author, licence and split;
* ``train/NAME.jpg``: training photos, area-downscaled to a short side of TRAIN_SHORT_SIDE_PX, JPEG
  quality 94 with full-resolution chroma (4:4:4), so a 256 px crop still fits twice;
* ``val/NAME.png``: the fixed, never-trained validation photos, area-downscaled to a long side of
  VAL_LONG_SIDE_PX (the size of the existing held-out frames), lossless.

Recipe (about 4 MB; Debian 12 package versions in PACKAGES; nothing is installed system-wide):

    python scripts/build_content_pack.py --out .gpu/content.tar

It runs ``apt-get download`` for each package into a temporary folder and unpacks it with ``dpkg -x``.
``--debs DIR`` takes already-downloaded ``.deb`` files instead. Not used, on purpose: Debian's
``mate-backgrounds`` and the sample images of scikit-learn and matplotlib (reserved for an independent
evaluation that this project never trains or tunes on), and drawings / renders / gradients of these
packages (not natural photos).
"""

from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, when run from a checkout

TRAIN_SHORT_SIDE_PX = 512
VAL_LONG_SIDE_PX = 640

# package -> version the recipe was written against (apt-get download takes the candidate version).
PACKAGES = {
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
}
LOMIRI = "usr/share/backgrounds/{}"
PLASMA = "usr/share/wallpapers/{}/contents/images/"  # largest image of the folder is taken

# (name, package, path pattern in the package, author, licence per the package's copyright / metadata file, split)
PHOTOS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("bridge", "lomiri-wallpapers-16.04", LOMIRI.format("Bridge_by_Sander_Klootwijk.jpg"), "Sander Klootwijk",
     "CC-BY-SA-4.0", "train"),
    ("dragonfly", "lomiri-wallpapers-16.04", LOMIRI.format("Dragonfly_by_Bolly.jpg"), "Bolly", "CC-BY-SA-4.0",
     "train"),
    ("fig", "lomiri-wallpapers-16.04", LOMIRI.format("Picture_0B_by_freespace.jpg"), "Trevor Freespace",
     "CC-BY-4.0", "train"),
    ("brushes", "lomiri-wallpapers-16.04", LOMIRI.format("Picture_1A_by_freespace.jpg"), "Trevor Freespace",
     "CC-BY-4.0", "train"),
    ("wine", "lomiri-wallpapers-16.04", LOMIRI.format("Wine_by_Jakkub_Mede.jpg"), "Jakub Mede", "CC-BY-4.0",
     "train"),
    ("aitzgorri", "lomiri-wallpapers-16.04", LOMIRI.format("aitzgorri_by_Aitzol_Berasategi.jpg"),
     "Aitzol Berasategi", "CC-BY-4.0", "train"),
    ("free", "lomiri-wallpapers-16.04", LOMIRI.format("free_by_Peter_Nerlich.jpg"), "Peter Nerlich",
     "CC-BY-SA-4.0", "train"),
    ("friends", "lomiri-wallpapers-16.04", LOMIRI.format("friends_by_Aitzol_Berasategi.jpg"), "Aitzol Berasategi",
     "CC-BY-4.0", "train"),
    ("greentock", "lomiri-wallpapers-16.04", LOMIRI.format("greentock_by_Peter_Nerlich.jpg"), "Peter Nerlich",
     "CC-BY-SA-4.0", "train"),
    ("life", "lomiri-wallpapers-16.04", LOMIRI.format("life_by_Aitzol_Berasategi.jpg"), "Aitzol Berasategi",
     "CC-BY-4.0", "val"),
    ("picosdeeuropa", "lomiri-wallpapers-16.04", LOMIRI.format("picosdeeuropa_by_Aitzol_Berasategi.jpg"),
     "Aitzol Berasategi", "CC-BY-4.0", "val"),
    ("seeding", "lomiri-wallpapers-16.04", LOMIRI.format("seeding_by_Clements_Engelhardt.jpg"),
     "Clemens Engelhardt", "CC0-1.0", "train"),
    ("sunset", "lomiri-wallpapers-16.04", LOMIRI.format("sunset_by_Aitzol_Berasategi.jpg"), "Aitzol Berasategi",
     "CC-BY-4.0", "train"),
    ("kleiber", "lomiri-wallpapers-20.04", LOMIRI.format("Kleiber_by_Lukas_Baubkus.jpg"), "Lukas Baubkus",
     "CC-BY-SA-3.0", "train"),
    ("by_the_water", "plasma-workspace-wallpapers", PLASMA.format("BytheWater"), "Maciej Wiklo", "LGPL-3.0",
     "train"),
    ("cold_ripple", "plasma-workspace-wallpapers", PLASMA.format("ColdRipple"), "Risto Saukonpaa", "LGPL-3.0",
     "train"),
    ("colorful_cups", "plasma-workspace-wallpapers", PLASMA.format("ColorfulCups"), "Dmitri Popov", "LGPL-3.0",
     "train"),
    ("darkest_hour", "plasma-workspace-wallpapers", PLASMA.format("DarkestHour"), "Risto Saukonpaa", "LGPL-3.0",
     "train"),
    ("evening_glow", "plasma-workspace-wallpapers", PLASMA.format("EveningGlow"), "Ian Hex", "LGPL-3.0", "val"),
    ("fallen_leaf", "plasma-workspace-wallpapers", PLASMA.format("FallenLeaf"), "Martin Klapetek", "LGPL-3.0",
     "train"),
    ("grey", "plasma-workspace-wallpapers", PLASMA.format("Grey"), "Sigi Sagi", "LGPL-3.0", "train"),
    ("one_stands_out", "plasma-workspace-wallpapers", PLASMA.format("OneStandsOut"), "Risto Saukonpaa",
     "LGPL-3.0", "train"),
    ("path", "plasma-workspace-wallpapers", PLASMA.format("Path"), "Risto Saukonpaa", "LGPL-3.0", "val"),
    ("volna", "plasma-workspace-wallpapers", PLASMA.format("Volna"), "Nikita Babin", "CC-BY-SA-4.0", "train"),
    ("summer_1am", "plasma-workspace-wallpapers", PLASMA.format("summer_1am"), "Risto Saukonpaa", "LGPL-3.0",
     "train"),
)
FORBIDDEN_PACKAGES = ("mate-backgrounds",)


def fetch_packages(work: Path, debs: Path | None) -> dict[str, Path]:
    """Unpack each package (downloaded here, or found in ``debs``) into work/NAME; returns NAME -> root."""
    roots = {}
    for package in PACKAGES:
        if debs is None:
            subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
            found = glob.glob(str(work / f"{package}_*.deb"))
        else:
            found = glob.glob(str(debs / f"{package}_*.deb"))
        if len(found) != 1:
            raise SystemExit(f"expected one {package}_*.deb, found {found}")
        root = work / package
        subprocess.run(["dpkg", "-x", found[0], str(root)], check=True)
        roots[package] = root
    return roots


def source_file(root: Path, pattern: str) -> Path:
    if pattern.endswith("/"):
        files = [p for p in (root / pattern).iterdir() if p.suffix.lower() in (".jpg", ".png")]
        return max(files, key=lambda p: p.stat().st_size)
    return root / pattern


def resize(image: np.ndarray, split: str) -> np.ndarray:
    h, w = image.shape[:2]
    scale = TRAIN_SHORT_SIDE_PX / min(h, w) if split == "train" else VAL_LONG_SIDE_PX / max(h, w)
    if scale >= 1.0:
        return image
    size = (round(w * scale), round(h * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def build(out: Path, debs: Path | None) -> dict:
    from cliphaze.train.content import PackImage, write_content_pack

    assert not set(PACKAGES) & set(FORBIDDEN_PACKAGES)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = fetch_packages(Path(tmp), debs)
        for name, package, pattern, author, licence, split in PHOTOS:
            path = source_file(roots[package], pattern)
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise SystemExit(f"cannot read {path}")
            source = {"package": package, "version": PACKAGES[package], "source": str(path.relative_to(roots[package])),
                      "author": author, "licence": licence, "source_size": [image.shape[1], image.shape[0]]}
            rgb = cv2.cvtColor(resize(image, split), cv2.COLOR_BGR2RGB)
            images.append(PackImage(name=name, split=split, image=rgb, source=source))
    return write_content_pack(out, images, PACKAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the tar to write")
    parser.add_argument("--debs", type=Path, help="folder with the .deb files (default: apt-get download)")
    args = parser.parse_args()
    manifest = build(args.out, args.debs)
    counts = {s: sum(1 for i in manifest["images"] if i["split"] == s) for s in ("train", "val")}
    print(f"{args.out}: {counts['train']} training and {counts['val']} validation photos, "
          f"{args.out.stat().st_size / 1e6:.1f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
