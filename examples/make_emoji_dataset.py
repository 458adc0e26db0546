#!/usr/bin/env python3
"""Builds a small real captioned image dataset, offline but for the npm registry: the Twemoji
emoji images, each captioned from its official Unicode CLDR name ("an emoji of a grinning
face"), laid out for `msclip prepare`.

What it downloads (the npm registry, with `npm pack`; each tarball checked against the sha512
pinned below, and kept in --cache so a second run needs no network):

- emoji-datasource-twitter 16.0.0 (emoji-data by Cal Henderson, MIT): emoji.json (code points,
  Unicode names, categories, skin-tone variants) and img/twitter/64/*.png, the Twemoji images
  (jdecked's fork, v16.0.1) as 64 x 64 PNGs: 1,911 emoji + 1,875 skin-tone variants = 3,786.
- emojibase-data 17.0.0 (Miles Johnson, MIT; the names are Unicode CLDR's English annotations,
  Unicode License v3): en/data.json, the CLDR short names ("grinning face with smiling eyes",
  "flag: Japan", "waving hand: medium skin tone") and keywords. 3,786 of 3,786 images match a
  name by code point.
- only with --svg-size N: @twemoji/svg 15.0.0 (MIT packaging of the Twemoji SVGs, v15), drawn
  at N x N px with cairosvg (`pip install cairosvg`; it needs the cairo library, Debian
  `apt-get install libcairo2`). Emoji newer than Emoji 15.0 have no SVG there and are left
  out (126 of 3,786: 3,660 remain).

Licence of the images: the Twemoji graphics are (c) Twitter, Inc and other contributors,
licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/). The script writes
ATTRIBUTION.md into the output folder, naming the sources and the changes made (composited
onto a background, renamed, and with --svg-size rasterised): keep it with the data.

Output layout (OUT):

    images/<code points>.png   RGB PNGs, the transparent background composited onto white
                               (--background; msclip prepare, like PIL's convert("RGB"),
                               drops alpha without compositing, which would turn the
                               transparent background black); --background none copies the
                               packaged RGBA/palette PNGs unchanged
    pairs.tsv                  header `filepath<TAB>title`, paths relative to OUT
    train.tsv, test.tsv        the same rows split by base emoji (a skin-tone variant always
                               lands with its base), --test-fraction of them (default 0.1)
                               held out, chosen by a hash of the code points: stable across
                               runs, versions and options
    metadata.jsonl             per image: file, emoji, code points, CLDR label, Unicode name,
                               category, subcategory, keywords, split, captions
    ATTRIBUTION.md             licence and attribution note (required by CC-BY 4.0)
    SOURCE.json                packages, versions, checksums, options and counts

Captions come from the CLDR name put into a template: "an emoji of a grinning face", "an
emoji of the flag of Japan", "an emoji of a waving hand with medium skin tone", "an emoji of
crossed fingers" (a/an/no article by a small rule set, so a few read oddly). --captions first
(default) writes one row per image with the first template; `all` one row per image and
template (4 rows per image: more text variety for training, duplicated images for retrieval);
`cycle` one row per image, the template taken in turn.

Run (Python 3.11, the standard library and Pillow; npm on PATH, or --registry URL):

    pip install pillow
    python3 examples/make_emoji_dataset.py /tmp/emoji
    msclip prepare --input /tmp/emoji/pairs.tsv --out /tmp/emoji-prepared --resolution 64
    # larger images, drawn from the SVGs:
    pip install cairosvg && python3 examples/make_emoji_dataset.py /tmp/emoji-224 --svg-size 224

Without npm, --registry (or $NPM_CONFIG_REGISTRY) names the npm registry's URL and the script
fetches the tarballs itself with urllib. A tarball already in --cache is used without asking
anyone. OUT must be new or empty.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGES = {
    "emoji-datasource-twitter": (
        "16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    ),
    "emojibase-data": (
        "17.0.0",
        "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
    ),
    "@twemoji/svg": (
        "15.0.0",
        "sha512-ZSPef2B6nBaYnfgdTbAy4jgW95o7pi2xPGwGCU+WMTxo7J6B1lMPTWwSq/wTuiMq+N0khQ90CcvYp1wFoQpo/w==",
    ),
}

TEMPLATES = [
    "an emoji of {}",
    "an icon of {}",
    "a flat cartoon drawing of {}",
    "{} as an emoji",
]


def fail(message: str) -> None:
    print(f"make_emoji_dataset: error: {message}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Fetching the npm tarballs


def integrity_of(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def tarball_name(name: str, version: str) -> str:
    # npm pack's file name: "@scope/pkg" -> "scope-pkg-VERSION.tgz"
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def npm_pack(name: str, version: str, cache: Path) -> None:
    command = ["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache),
               "--loglevel=error"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        fail(f"`{' '.join(command)}` got no answer in 15 minutes: is the npm registry reachable?")
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        fail(
            f"`{' '.join(command)}` failed (exit {done.returncode}); the npm registry may be "
            f"unreachable from here, or npm misconfigured:\n{tail}"
        )


def registry_get(url: str, what: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        fail(f"the registry answered {error.code} {error.reason} for {what} ({url})")
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        fail(f"cannot reach the npm registry for {what} ({url}): {error}")
    raise AssertionError


def registry_fetch(name: str, version: str, registry: str, target: Path) -> None:
    base = registry.rstrip("/")
    meta_url = f"{base}/{urllib.parse.quote(name, safe='@')}/{version}"
    meta = json.loads(registry_get(meta_url, f"{name}@{version}"))
    tarball = meta.get("dist", {}).get("tarball")
    if not tarball:
        fail(f"the registry's record of {name}@{version} names no tarball")
    data = registry_get(tarball, f"the tarball of {name}@{version}")
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)


def fetch(name: str, cache: Path, registry: str | None) -> Path:
    version, integrity = PACKAGES[name]
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / tarball_name(name, version)
    if path.exists() and integrity_of(path) == integrity:
        print(f"  {name}@{version}: cached, {path}")
        return path
    started = time.time()
    if registry:
        registry_fetch(name, version, registry, path)
    elif shutil.which("npm"):
        npm_pack(name, version, cache)
    else:
        fail(
            f"cannot fetch {name}@{version}: npm is not on PATH and no registry was given. "
            "Install npm (Debian: apt-get install npm), or pass --registry URL (or set "
            f"NPM_CONFIG_REGISTRY) to fetch with urllib, or put {path.name} into {cache}."
        )
    if not path.exists():
        fail(f"fetching {name}@{version} left no {path}")
    found = integrity_of(path)
    if found != integrity:
        fail(
            f"{path} does not have the pinned checksum of {name}@{version}:\n  expected "
            f"{integrity}\n  got      {found}\n(delete it and run again; if it persists, "
            "the registry serves another file under this version)"
        )
    size = path.stat().st_size / 1e6
    print(f"  {name}@{version}: fetched, {size:.1f} MB in {time.time() - started:.1f} s")
    return path


def read_members(tarball: Path, wanted) -> dict[str, bytes]:
    """Reads the members whose names `wanted` accepts, in one pass through the archive."""
    found = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.isfile() and wanted(member.name):
                found[member.name] = archive.extractfile(member).read()
    return found


# ---------------------------------------------------------------------------------------------
# Captions from CLDR names

# A plural or mass head noun takes no article ("crossed fingers", "people holding hands").
PLURAL_WORDS = {"men", "women", "people", "children", "feet", "teeth", "mice", "geese"}
SINGULAR_S = ("ss", "us", "is", "os", "ics")
HEAD_BREAKS = (" with ", " in ", " of ", " on ", " over ", " showing ", " holding ", " and ",
               " for ", " at ", " from ", " under ", " behind ", " facing ", " blowing ")
NO_ARTICLE = {"Santa Claus", "Mrs. Claus", "Mx Claus", "rolling on the floor laughing"}
THE_ARTICLE = {"Statue of Liberty", "Tokyo tower"}
# Letter names that start with a vowel sound, for initialisms ("an OK hand", "an SOS button").
VOWEL_LETTERS = set("AEFHILMNORSX")
INITIALISMS = {"ATM", "ID", "NG", "SOS", "OK", "AB", "A", "B", "O", "P", "CL", "VS", "ZZZ", "DNA",
               "T-Rex"}
CONSONANT_SOUND = ("uni", "use", "usu", "euro", "one", "once", "ufo")
VOWEL_SOUND = ("hour", "honest", "honor", "honour")


def head_of(phrase: str) -> str:
    """The head noun phrase: "man lifting weights" -> "man", "face in clouds" -> "face"."""
    cut = len(phrase)
    for mark in HEAD_BREAKS:
        at = phrase.find(mark)
        if at > 0:
            cut = min(cut, at)
    words = phrase[:cut].split()
    for i, word in enumerate(words[1:], 1):
        if word.endswith("ing"):
            return " ".join(words[:i])
    return " ".join(words)


def with_article(phrase: str, zodiac: bool = False) -> str:
    if phrase in NO_ARTICLE or zodiac:
        return phrase
    if phrase in THE_ARTICLE:
        return "the " + phrase
    last = head_of(phrase).split()[-1].lower().strip("’'!")
    if last in PLURAL_WORDS or (last.endswith("s") and not last.endswith(SINGULAR_S)):
        return phrase
    first = phrase.split()[0]
    bare = first.strip("!")
    if bare in INITIALISMS or (bare.isupper() and len(bare) <= 3 and bare.isalpha()):
        vowel = bare[0] in VOWEL_LETTERS
    else:
        low = first.lower()
        vowel = (low[0] in "aeiou" and not low.startswith(CONSONANT_SOUND)) or low.startswith(
            VOWEL_SOUND
        )
    return ("an " if vowel else "a ") + phrase


def join_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(label: str, zodiac: bool = False) -> str:
    """A CLDR name as a noun phrase with its article: "flag: Japan" -> "the flag of Japan"."""
    if ": " not in label:
        return with_article(label, zodiac)
    subject, detail = label.split(": ", 1)
    if subject == "flag":
        return "the flag of " + detail
    if subject == "keycap":
        return "a keycap showing " + detail
    details = detail.split(", ")
    if details == ["bald"]:
        return with_article("bald " + subject)
    phrase = with_article(subject)
    if "facing right" in details:
        details.remove("facing right")
        phrase += " facing right"
    if not details:
        return phrase
    return phrase + (": " if " with " in subject else " with ") + join_list(details)


# ---------------------------------------------------------------------------------------------
# Images


def parse_background(text: str):
    if text == "none":
        return None
    named = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
    if text in named:
        return named[text]
    value = text.lstrip("#")
    if len(value) == 6:
        try:
            return tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"not a colour: {text!r} (white, black, grey, #RRGGBB, none)")


def composite(png: bytes, background) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    canvas.alpha_composite(rgba)
    out = io.BytesIO()
    canvas.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def svg_key(unified: str) -> list[str]:
    """The names @twemoji/svg may use for a code-point sequence (Twemoji drops FE0F outside
    ZWJ sequences and leading zeros)."""
    parts = unified.lower().split("-")
    without_fe0f = [p for p in parts if p != "fe0f"]
    return [
        "-".join(parts),
        "-".join(without_fe0f),
        "-".join(p.lstrip("0") for p in parts),
        "-".join(p.lstrip("0") for p in without_fe0f),
    ]


# ---------------------------------------------------------------------------------------------


def tsv_field(text: str) -> str:
    text = " ".join(text.split())  # no tab or newline inside a field
    if text.startswith('"'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write("filepath\ttitle\n")
        for filepath, title in rows:
            out.write(f"{tsv_field(filepath)}\t{tsv_field(title)}\n")


def in_test(base_unified: str, fraction: float) -> bool:
    digest = hashlib.sha256(base_unified.upper().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


ATTRIBUTION = """# Attribution and licence

The images in `images/` are **Twemoji** graphics, Copyright 2014-2024 Twitter, Inc and other
contributors (maintained at github.com/jdecked/twemoji), licensed under the **Creative Commons
Attribution 4.0 International licence (CC-BY 4.0)**:
https://creativecommons.org/licenses/by/4.0/

Where they came from: {image_source}.

Changes made: {changes}; the files were renamed after their code points.

The captions are built from the English short names of the Unicode CLDR annotations, as
packaged in emojibase-data 17.0.0 (MIT, Miles Johnson; CLDR data: Unicode License v3,
https://www.unicode.org/license.txt), and the categories from emoji-data's emoji.json
(emoji-datasource-twitter 16.0.0, MIT, Cal Henderson). The caption templates and their
grammar are this script's (msclip examples/make_emoji_dataset.py).

When you publish anything made with these images (a figure, a model card, a data set),
credit them, for example: "Emoji graphics: Twemoji, (c) Twitter, Inc and other
contributors, CC-BY 4.0".
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Twemoji images captioned with their CLDR names, for msclip prepare.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="output folder (new or empty)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "msclip" / "npm",
                        help="where the npm tarballs are kept")
    parser.add_argument("--registry", default=os.environ.get("NPM_CONFIG_REGISTRY")
                        or os.environ.get("npm_config_registry"),
                        help="the npm registry's URL, to fetch with urllib instead of npm")
    parser.add_argument("--svg-size", type=int, default=0,
                        help="draw the Twemoji SVGs at this size (needs cairosvg) instead of "
                             "using the 64 px PNGs")
    parser.add_argument("--background", type=parse_background, default=(255, 255, 255),
                        help="colour under the transparent parts: white, black, grey, #RRGGBB, "
                             "or none (copy the PNGs with their alpha)")
    parser.add_argument("--no-skin-tones", action="store_true",
                        help="leave out the skin-tone variants (1,911 images instead of 3,786)")
    parser.add_argument("--captions", choices=["first", "all", "cycle"], default="first",
                        help="one row per image with the first template, one per template, "
                             "or one with the templates in turn")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of base emoji held out in test.tsv")
    parser.add_argument("--limit", type=int, default=0, help="keep only the first N images")
    args = parser.parse_args()

    if args.out.exists() and any(args.out.iterdir()):
        fail(f"{args.out} is not empty")
    if args.background is not None or args.svg_size:
        try:
            import PIL  # noqa: F401
        except ImportError:
            fail("Pillow is needed to composite the images: pip install pillow "
                 "(or --background none, which copies the PNGs as they are)")
    if args.svg_size and args.background is None:
        fail("--svg-size needs a --background to composite on")
    if args.svg_size:
        try:
            import cairosvg  # noqa: F401
        except ImportError:
            fail("--svg-size needs cairosvg: pip install cairosvg")
        except OSError as error:
            fail(f"cairosvg cannot load the cairo library ({error}): apt-get install libcairo2")

    started = time.time()
    print("fetching (npm registry):")
    twitter = fetch("emoji-datasource-twitter", args.cache, args.registry)
    emojibase = fetch("emojibase-data", args.cache, args.registry)
    svg_tarball = fetch("@twemoji/svg", args.cache, args.registry) if args.svg_size else None
    fetched = time.time()

    print("reading the tarballs")
    data = read_members(twitter, lambda n: n == "package/emoji.json")
    emoji_json = json.loads(data["package/emoji.json"])
    data = read_members(emojibase, lambda n: n == "package/en/data.json")
    cldr = {}

    def add_cldr(entry):
        cldr[entry["hexcode"].upper()] = entry
        for skin in entry.get("skins", []):
            add_cldr(skin)

    for entry in json.loads(data["package/en/data.json"]):
        add_cldr(entry)
    cldr_no_fe0f = {k.replace("-FE0F", ""): v for k, v in cldr.items()}

    # The images to make, in emoji-data's order, each skin-tone variant after its base.
    items = []
    for entry in sorted(emoji_json, key=lambda e: e.get("sort_order", 0)):
        if not entry.get("has_img_twitter"):
            continue
        items.append((entry, entry["unified"], entry["image"], None))
        if args.no_skin_tones:
            continue
        for tone, variant in sorted(entry.get("skin_variations", {}).items()):
            if variant.get("has_img_twitter"):
                items.append((entry, variant["unified"], variant["image"], tone))
    if args.limit:
        items = items[: args.limit]

    if args.svg_size:
        sources = read_members(svg_tarball, lambda n: n.endswith(".svg"))
        sources = {Path(n).stem: b for n, b in sources.items()}
    else:
        wanted = {f"package/img/twitter/64/{image}" for _, _, image, _ in items}
        sources = read_members(twitter, lambda n: n in wanted)

    images = args.out / "images"
    images.mkdir(parents=True)
    rows, train, test, skipped, unnamed = [], [], [], [], 0
    categories = {}
    with (args.out / "metadata.jsonl").open("w", encoding="utf-8") as metadata:
        for index, (entry, unified, image, tone) in enumerate(items):
            if args.svg_size:
                svg = next((sources[k] for k in svg_key(unified) if k in sources), None)
                if svg is None:
                    skipped.append(unified)
                    continue
                import cairosvg

                png = cairosvg.svg2png(bytestring=svg, output_width=args.svg_size,
                                       output_height=args.svg_size)
            else:
                png = sources.get(f"package/img/twitter/64/{image}")
                if png is None:
                    skipped.append(unified)
                    continue
            if args.background is not None:
                png = composite(png, args.background)
            name = f"images/{unified.lower()}.png"
            (args.out / name).write_bytes(png)

            named = cldr.get(unified.upper()) or cldr_no_fe0f.get(unified.upper().replace("-FE0F", ""))
            if named:
                label = named["label"]
            else:  # emoji-data's Unicode name, lower-cased
                unnamed += 1
                label = entry["name"].lower()
            phrase = describe(label, zodiac=entry.get("subcategory") == "zodiac")
            captions = [t.format(phrase) for t in TEMPLATES]
            if args.captions == "first":
                chosen = captions[:1]
            elif args.captions == "cycle":
                chosen = [captions[index % len(captions)]]
            else:
                chosen = captions
            split = "test" if in_test(entry["unified"], args.test_fraction) else "train"
            pairs = [(name, c) for c in chosen]
            rows += pairs
            (test if split == "test" else train).extend(pairs)
            categories[entry.get("category")] = categories.get(entry.get("category"), 0) + 1
            record = {
                "file": name,
                "emoji": "".join(chr(int(p, 16)) for p in unified.split("-")),
                "unified": unified,
                "label": label,
                "unicode_name": entry["name"],
                "category": entry.get("category"),
                "subcategory": entry.get("subcategory"),
                "skin_tone": tone,
                "keywords": (named or {}).get("tags", []),
                "split": split,
                "captions": captions,
            }
            metadata.write(json.dumps(record, ensure_ascii=False) + "\n")

    if not rows:
        fail("no image was written")
    write_tsv(args.out / "pairs.tsv", rows)
    write_tsv(args.out / "train.tsv", train)
    write_tsv(args.out / "test.tsv", test)

    written = len(list(images.iterdir()))
    if args.svg_size:
        image_source = ("@twemoji/svg 15.0.0 (npm; the Twemoji v15 SVGs, packaged by Samuel Kopp "
                        "under MIT)")
        changes = (f"drawn from SVG at {args.svg_size} x {args.svg_size} px with cairosvg and "
                   "composited onto an opaque background "
                   f"{'#%02x%02x%02x' % args.background}")
    else:
        image_source = ("emoji-datasource-twitter 16.0.0 (npm; emoji-data by Cal Henderson, whose "
                        "twitter image set is Twemoji v16.0.1), img/twitter/64/")
        changes = ("none to the pixels" if args.background is None else
                   "composited onto an opaque background "
                   f"{'#%02x%02x%02x' % args.background} and saved as RGB PNG")
    (args.out / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(image_source=image_source, changes=changes), encoding="utf-8")
    source = {
        "script": "examples/make_emoji_dataset.py",
        "packages": {n: {"version": v, "integrity": i} for n, (v, i) in PACKAGES.items()
                     if n != "@twemoji/svg" or args.svg_size},
        "options": {"svg_size": args.svg_size, "background": args.background,
                    "skin_tones": not args.no_skin_tones, "captions": args.captions,
                    "test_fraction": args.test_fraction, "limit": args.limit},
        "images": written,
        "rows": {"pairs": len(rows), "train": len(train), "test": len(test)},
        "no_image": skipped,
        "without_cldr_name": unnamed,
        "categories": categories,
        "templates": TEMPLATES,
    }
    (args.out / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n", encoding="utf-8")

    size = sum(p.stat().st_size for p in images.iterdir()) / 1e6
    print(f"wrote {written} images ({size:.1f} MB) and {len(rows)} caption rows to {args.out}: "
          f"train {len(train)}, test {len(test)} rows")
    if skipped:
        print(f"  {len(skipped)} emoji without an image in the package, left out "
              f"(first: {', '.join(skipped[:5])})")
    if unnamed:
        print(f"  {unnamed} images without a CLDR name: captioned from the Unicode name")
    print(f"  fetch {fetched - started:.1f} s, build {time.time() - fetched:.1f} s")
    example = rows[min(len(rows) - 1, 1)]
    print(f"  e.g. {example[0]}\t{example[1]}")
    print(f"next: msclip prepare --input {args.out / 'pairs.tsv'} --out DIR --resolution "
          f"{args.svg_size or 64}")


if __name__ == "__main__":
    main()
