"""Build `glyphs`, the harder development set of grids/nest-glyphs.toml: 91 characters (classes)
rendered from 85 font files of 10 type designs, with capture jitter, 32x32 RGB.

    python grids/glyphs_data.py runs/data/glyphs            # all fonts, as documented
    python grids/glyphs_data.py OUT --font-root DIR ...     # tests: other roots / a subset

Classes: Latin A-Z, the Latin lower case letters that are not a scaled copy of their capital
or a mirror image of another class (a b e f g h i j k m n p r t u y), digits, the Greek
capitals and lower case letters that are no Latin homoglyph, and the Cyrillic capitals that
are neither a Latin/Greek homoglyph nor a mirror image (MoCo's augmentation flips images
horizontally, so b/d, p/q, N/И and R/Я would be one class to it) nor the digit 3 (З).

Sources: each split holds whole type designs (a design's clones and derivatives travel with
it: Nimbus Sans, FreeSans and Liberation Sans are one Helvetica-lineage design), so the test
split's fonts are designs the training never saw, and so are the validation split's, which
are disjoint from both (choices are made on validation; test is read for the final table):

- train: Helvetica lineage, Times lineage (with STIX), Courier lineage, DejaVu Sans (with
  Condensed, ExtraLight, Mono), DejaVu Serif (with Condensed): 65 fonts, 1 render each
- validation: Century Schoolbook (C059), Bookman (URW Bookman): 8 fonts, 2 renders each
- test: Palatino (P052), Avant Garde (URW Gothic), Carlito: 12 fonts, 2 renders each

Capture jitter per image (seeded, so the set is the same on every machine with the same font
files): scale 0.8-1.1, rotation +-8 degrees, offset +-2 px, stroke weight +0..3/128 of the
height, paper grey 0.7-1.0 and ink grey 0-0.35 (each with a faint +-0.04 tint per channel),
Gaussian noise. Random colours were tried first and dropped: MoCo learnt the colours, not the
characters (validation kNN top-1 0.07 at full dim, where 1-NN on raw pixels gets 0.57).
Rendering: 128x128, downsampled (box filter) to 32x32.

Fonts come from Debian packages (fonts-urw-base35, fonts-liberation2, fonts-freefont-ttf,
fonts-dejavu-core, fonts-dejavu-extra, fonts-crosextra-carlito) and matplotlib's bundled STIX;
the dataset records every font file, its SHA-256 and the package versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES = (
    list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    + list("abefghijkmnprtuy")
    + list("0123456789")
    + list("ΓΔΘΛΞΠΣΦΨΩ")
    + list("αβγδεζηθλμξπσφψω")
    + list("БДЖЛЦЧШЩЪЫЬЭЮ")
)

STYLES4 = ("Regular", "Bold", "Italic", "BoldItalic")
URW = "/usr/share/fonts/opentype/urw-base35"
FREE = "/usr/share/fonts/truetype/freefont"
LIB = "/usr/share/fonts/truetype/liberation2"
DJV = "/usr/share/fonts/truetype/dejavu"
CROS = "/usr/share/fonts/truetype/crosextra"


def _mpl_ttf() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf")


# split -> design -> font files ({MPL} = matplotlib's bundled fonts)
DESIGNS: dict[str, dict[str, list[str]]] = {
    "train": {
        "helvetica": [f"{URW}/NimbusSans-{s}.otf" for s in STYLES4]
        + [f"{URW}/NimbusSansNarrow-{s}.otf" for s in ("Regular", "Bold", "Oblique", "BoldOblique")]
        + [f"{FREE}/FreeSans{s}.ttf" for s in ("", "Bold", "Oblique", "BoldOblique")]
        + [f"{LIB}/LiberationSans-{s}.ttf" for s in STYLES4],
        "times": [f"{URW}/NimbusRoman-{s}.otf" for s in STYLES4]
        + [f"{FREE}/FreeSerif{s}.ttf" for s in ("", "Bold", "Italic", "BoldItalic")]
        + [f"{LIB}/LiberationSerif-{s}.ttf" for s in STYLES4]
        + [f"{{MPL}}/STIXGeneral{s}.ttf" for s in ("", "Bol", "Italic", "BolIta")],
        "courier": [f"{URW}/NimbusMonoPS-{s}.otf" for s in STYLES4]
        + [f"{FREE}/FreeMono{s}.ttf" for s in ("", "Bold", "Oblique", "BoldOblique")]
        + [f"{LIB}/LiberationMono-{s}.ttf" for s in STYLES4],
        "dejavu-sans": [
            f"{DJV}/DejaVuSans{s}.ttf"
            for s in (
                "",
                "-Bold",
                "-Oblique",
                "-BoldOblique",
                "-ExtraLight",
                "Condensed",
                "Condensed-Bold",
                "Condensed-Oblique",
                "Condensed-BoldOblique",
                "Mono",
                "Mono-Bold",
                "Mono-Oblique",
                "Mono-BoldOblique",
            )
        ],
        "dejavu-serif": [
            f"{DJV}/DejaVuSerif{s}.ttf"
            for s in (
                "",
                "-Bold",
                "-Italic",
                "-BoldItalic",
                "Condensed",
                "Condensed-Bold",
                "Condensed-Italic",
                "Condensed-BoldItalic",
            )
        ],
    },
    "validation": {
        "century": [f"{URW}/C059-{s}.otf" for s in ("Roman", "Bold", "Italic", "BdIta")],
        "bookman": [
            f"{URW}/URWBookman-{s}.otf" for s in ("Light", "Demi", "LightItalic", "DemiItalic")
        ],
    },
    "test": {
        "palatino": [f"{URW}/P052-{s}.otf" for s in ("Roman", "Bold", "Italic", "BoldItalic")],
        "avant-garde": [
            f"{URW}/URWGothic-{s}.otf" for s in ("Book", "Demi", "BookOblique", "DemiOblique")
        ],
        "carlito": [f"{CROS}/Carlito-{s}.ttf" for s in STYLES4],
    },
}
RENDERS = {"train": 1, "validation": 2, "test": 2}
PACKAGES = ("fonts-urw-base35", "fonts-liberation2", "fonts-freefont-ttf", "fonts-dejavu-core",
            "fonts-dejavu-extra", "fonts-crosextra-carlito")  # fmt: skip
CANVAS, SIZE = 128, 32


def font_paths(designs: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    mpl = _mpl_ttf()
    return {
        split: {d: [p.replace("{MPL}", mpl) for p in paths] for d, paths in groups.items()}
        for split, groups in designs.items()
    }


def missing_glyphs(path: str) -> list[str]:
    from fontTools.ttLib import TTFont

    cmap = TTFont(path, lazy=True).getBestCmap()
    return [c for c in CLASSES if ord(c) not in cmap]


def check_fonts(designs: dict[str, dict[str, list[str]]]) -> None:
    """Refuse (exit 2, one line) if a font file is absent or lacks a class's glyph."""
    absent = [p for g in designs.values() for ps in g.values() for p in ps if not Path(p).is_file()]
    if absent:
        sys.exit(
            f"glyphs_data: {len(absent)} font files missing (first: {absent[0]}); install them "
            f"with: apt-get install {' '.join(PACKAGES)}"
        )
    for groups in designs.values():
        for paths in groups.values():
            for p in paths:
                miss = missing_glyphs(p)
                if miss:
                    sys.exit(f"glyphs_data: {p} lacks the glyphs {''.join(miss)}")


def render(font: ImageFont.FreeTypeFont, char: str, rng: np.random.Generator) -> Image.Image:
    """One 32x32 RGB capture of `char` in `font` with the module docstring's jitter."""
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    scale = rng.uniform(0.8, 1.1)
    font = font.font_variant(size=round(0.8 * CANVAS * scale))
    dx, dy = rng.uniform(-8, 8, size=2)
    stroke = int(rng.integers(0, 4))
    draw.text(
        (CANVAS / 2 + dx, CANVAS * (0.5 + 0.25 * scale) + dy),
        char,
        fill=255,
        font=font,
        anchor="ms",
        stroke_width=stroke,
        stroke_fill=255,
    )
    mask = mask.rotate(rng.uniform(-8, 8), resample=Image.BICUBIC, center=(CANVAS / 2, CANVAS / 2))
    alpha = np.asarray(mask.resize((SIZE, SIZE), Image.BOX), dtype=np.float32)[..., None] / 255
    # dark ink on paper, grey levels and a faint tint jittered: random colours were a shortcut
    # MoCo took (v1: kNN top-1 0.07 at full dim on validation, raw pixels 0.57)
    bg = rng.uniform(0.7, 1.0) + rng.uniform(-0.04, 0.04, size=3)
    ink = rng.uniform(0.0, 0.35) + rng.uniform(-0.04, 0.04, size=3)
    img = bg * (1 - alpha) + ink * alpha + rng.normal(0, rng.uniform(0, 0.04), (SIZE, SIZE, 3))
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                               text=True, check=False).stdout.strip()  # fmt: skip
        except OSError:
            v = ""
        out[pkg] = v or "not installed (files found elsewhere)"
    import matplotlib

    out["matplotlib (STIX)"] = matplotlib.__version__
    return out


def build(out: str, designs: dict[str, dict[str, list[str]]], renders: dict[str, int]) -> dict:
    import datasets

    check_fonts(designs)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=CLASSES),
            "font": datasets.Value("string"),
            "design": datasets.Value("string"),
        }
    )
    splits, manifest = {}, {"classes": "".join(CLASSES), "splits": {}}
    for i, (split, groups) in enumerate(designs.items()):
        rng = np.random.default_rng(1000 + i)
        rows: dict[str, list] = {"image": [], "label": [], "font": [], "design": []}
        for design, paths in groups.items():
            for path in paths:
                font = ImageFont.truetype(path, 100)
                for _ in range(renders[split]):
                    for label, char in enumerate(CLASSES):
                        rows["image"].append(render(font, char, rng))
                        rows["label"].append(label)
                        rows["font"].append(Path(path).name)
                        rows["design"].append(design)
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
        manifest["splits"][split] = {
            "images": len(rows["label"]),
            "renders_per_font": renders[split],
            "designs": {d: {Path(p).name: sha256(p) for p in paths} for d, paths in groups.items()},
        }
    manifest["packages"] = package_versions()
    datasets.DatasetDict(splits).save_to_disk(out)
    (Path(out) / "glyphs_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    sizes = ", ".join(f"{s} {m['images']}" for s, m in manifest["splits"].items())
    print(f"wrote {out}: {len(CLASSES)} classes; {sizes}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument(
        "--fonts",
        help="tests: 'split=path,path;split=path' instead of the documented font list "
        "(one design per split)",
    )
    p.add_argument("--renders", type=int, help="renders per font in every split (tests)")
    args = p.parse_args(argv)
    designs = font_paths(DESIGNS)
    if args.fonts:
        designs = {}
        for part in args.fonts.split(";"):
            split, paths = part.split("=", 1)
            designs[split] = {"custom": [q for q in paths.split(",") if q]}
    renders = {s: args.renders or RENDERS.get(s, 1) for s in designs}
    build(args.out, designs, renders)


if __name__ == "__main__":
    main()
