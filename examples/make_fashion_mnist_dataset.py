#!/usr/bin/env python3
"""Writes Fashion-MNIST (Zalando's 28 x 28 grey photos of clothing, 10 classes) as an image
folder for zero-shot classification, and as a caption listing for `msclip prepare`, from
Debian's package of it: offline but for Debian's package archive.

What it reads: the Debian package dataset-fashion-mnist, version 0.0~git20200523.55506a9-1
(Debian 12; 30.9 MB; main), which holds the four original IDX files in
/usr/share/datasets/fashion-mnist/. Each is checked against the sha256 pinned below (Debian
re-compressed them, so the .gz files differ from upstream's and their md5s do not match
upstream's README). Where they come from, first that applies:

1. --deb PATH: a downloaded .deb of the package;
2. /usr/share/datasets/fashion-mnist/, where `apt-get install dataset-fashion-mnist` put them;
3. `apt-get download dataset-fashion-mnist=VERSION` into --cache (run `apt-get update` once
   first), then the .deb is unpacked here in Python (ar + data.tar.xz), nothing installed.

Licence: Fashion-MNIST is (c) 2017 Zalando SE, under the MIT (Expat) licence
(github.com/zalandoresearch/fashion-mnist); the script writes LICENSE.md into the output.

Output layout (OUT), the test split by default (10,000 images, 1,000 a class; --split train
for the 60,000 of the training split, --per-class N for the first N of each class):

    <class name>/<split>-<index>.png   8-bit grey PNGs, 28 x 28, as in the IDX file
                                       (index = position in the split's IDX file)
    classnames.txt                     the class names, one a line, in the sorted order of
                                       the folder names (= torchvision ImageFolder's label
                                       order); each line is also its folder's name
    labels.tsv                         folder name <TAB> Fashion-MNIST's label id (0-9)
    pairs.tsv                          `filepath<TAB>title`, captions "a photo of a coat",
                                       for msclip prepare (paths relative to OUT)
    LICENSE.md, SOURCE.json

Class names: Fashion-MNIST's ten, lower-cased, "T-shirt/top" written "t-shirt or top" (a
folder name cannot hold "/"): ankle boot, bag, coat, dress, pullover, sandal, shirt, sneaker,
t-shirt or top, trouser.

Run (Python 3.11, the standard library only; the PNGs are written with zlib):

    apt-get update
    python3 examples/make_fashion_mnist_dataset.py /tmp/fashion-mnist
    msclip prepare --input /tmp/fashion-mnist/pairs.tsv --out /tmp/fashion-prepared --resolution 64

OUT must be new or empty.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

PACKAGE = "dataset-fashion-mnist"
VERSION = "0.0~git20200523.55506a9-1"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
INSTALLED = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
# Fashion-MNIST's label ids 0-9, in order.
CLASSES = ["t-shirt or top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
           "sneaker", "bag", "ankle boot"]

LICENSE = """# Licence

Fashion-MNIST, Copyright (c) 2017 Zalando SE (github.com/zalandoresearch/fashion-mnist),
as packaged by Debian ({package} {version}). MIT (Expat) licence:

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

Written as PNG files and class folders by msclip's examples/make_fashion_mnist_dataset.py.
"""


def fail(message: str) -> None:
    print(f"make_fashion_mnist_dataset: error: {message}", file=sys.stderr)
    sys.exit(1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ar archive (a .deb is one)."""
    if not data.startswith(b"!<arch>\n"):
        fail("not a .deb (no ar header)")
    members, at = {}, 8
    while at + 60 <= len(data):
        header = data[at : at + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[at + 60 : at + 60 + size]
        at += 60 + size + (size % 2)
    return members


def files_from_deb(deb: bytes) -> dict[str, bytes]:
    members = ar_members(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        fail(f"the .deb has no data.tar member (it has {', '.join(members)})")
    payload = members[name]
    if name.endswith(".xz"):
        payload = lzma.decompress(payload)
    elif name.endswith(".gz"):
        payload = gzip.decompress(payload)
    elif name != "data.tar":
        fail(f"the .deb's {name} is compressed in a way Python 3.11 cannot read")
    found = {}
    with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        for member in archive:
            base = Path(member.name).name
            if member.isfile() and base in FILES and "fashion-mnist" in member.name:
                found[base] = archive.extractfile(member).read()
    return found


def apt_download(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    deb = cache / f"{PACKAGE}_{VERSION.replace(':', '%3a')}_all.deb"
    if deb.exists() and sha256(deb.read_bytes()) == DEB_SHA256:
        print(f"  {deb.name}: cached")
        return deb
    if not shutil.which("apt-get"):
        fail(f"apt-get is not here: download {PACKAGE} {VERSION} (Debian 12) by other means "
             "and pass it as --deb PATH")
    command = ["apt-get", "download", f"{PACKAGE}={VERSION}"]
    started = time.time()
    try:
        done = subprocess.run(command, cwd=cache, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        fail(f"`{' '.join(command)}` got no answer in 15 minutes: is Debian's archive reachable?")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        hint = ("run `apt-get update` first, or this machine's apt sources lack Debian 12 "
                "(bookworm) main" if "locate" in tail or "not found" in tail.lower()
                else "Debian's archive may be unreachable from here")
        fail(f"`{' '.join(command)}` failed (exit {done.returncode}): {hint}\n{tail}")
    if not deb.exists():
        fail(f"apt-get download left no {deb}")
    if sha256(deb.read_bytes()) != DEB_SHA256:
        fail(f"{deb} is not the pinned {PACKAGE} {VERSION} (sha256 differs)")
    print(f"  {deb.name}: downloaded, {deb.stat().st_size / 1e6:.1f} MB in "
          f"{time.time() - started:.1f} s")
    return deb


def read_idx(data: bytes, what: str):
    raw = gzip.decompress(data)
    magic, count = struct.unpack(">II", raw[:8])
    if magic == 0x801:
        return count, None, raw[8:]
    if magic == 0x803:
        rows, cols = struct.unpack(">II", raw[8:16])
        return count, (rows, cols), raw[16:]
    fail(f"{what}: not an IDX file of bytes (magic {magic:#x})")


def grey_png(pixels: bytes, width: int, height: int) -> bytes:
    """An 8-bit greyscale PNG, written with the standard library."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    lines = b"".join(b"\x00" + pixels[y * width : (y + 1) * width] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(lines, 9))
            + chunk(b"IEND", b""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Fashion-MNIST from Debian's package, as class folders and a caption list.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="output folder (new or empty)")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--per-class", type=int, default=0,
                        help="keep the first N images of each class (0: all)")
    parser.add_argument("--deb", type=Path, help=f"a downloaded {PACKAGE} .deb")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "msclip" / "deb",
                        help="where apt-get download puts the .deb")
    parser.add_argument("--template", default="a photo of {}",
                        help="caption template; {} is the class name with its article")
    args = parser.parse_args()

    if args.out.exists() and any(args.out.iterdir()):
        fail(f"{args.out} is not empty")
    started = time.time()
    print("reading Fashion-MNIST:")
    if args.deb:
        files, origin = files_from_deb(args.deb.read_bytes()), str(args.deb)
    elif all((INSTALLED / name).exists() for name in FILES):
        files = {name: (INSTALLED / name).read_bytes() for name in FILES}
        origin = f"{INSTALLED} (the installed package)"
    else:
        deb = apt_download(args.cache)
        files, origin = files_from_deb(deb.read_bytes()), str(deb)
    print(f"  from {origin}")
    for name, digest in FILES.items():
        if name not in files:
            fail(f"{origin} has no {name}")
        if sha256(files[name]) != digest:
            fail(f"{name} from {origin} is not the pinned file (sha256 differs)")
    read = time.time()

    prefix = "t10k" if args.split == "test" else "train"
    count, shape, pixels = read_idx(files[f"{prefix}-images-idx3-ubyte.gz"], "images")
    label_count, _, labels = read_idx(files[f"{prefix}-labels-idx1-ubyte.gz"], "labels")
    if count != label_count or shape != (28, 28) or len(pixels) != count * 28 * 28:
        fail(f"unexpected IDX shapes: {count} images {shape}, {label_count} labels")

    args.out.mkdir(parents=True, exist_ok=True)
    for name in CLASSES:
        (args.out / name).mkdir()
    kept = [0] * len(CLASSES)
    rows = []
    for index in range(count):
        label = labels[index]
        if args.per_class and kept[label] >= args.per_class:
            continue
        kept[label] += 1
        name = f"{CLASSES[label]}/{args.split}-{index:05d}.png"
        (args.out / name).write_bytes(grey_png(pixels[index * 784 : (index + 1) * 784], 28, 28))
        classname = CLASSES[label]
        article = "an" if classname[0] in "aeiou" else "a"
        rows.append((name, args.template.format(f"{article} {classname}")))

    folders = sorted(CLASSES)
    (args.out / "classnames.txt").write_text("".join(f"{c}\n" for c in folders), encoding="utf-8")
    (args.out / "labels.tsv").write_text(
        "folder\tfashion_mnist_label\n" + "".join(f"{c}\t{CLASSES.index(c)}\n" for c in folders),
        encoding="utf-8")
    with (args.out / "pairs.tsv").open("w", encoding="utf-8") as out:
        out.write("filepath\ttitle\n")
        out.writelines(f"{f}\t{t}\n" for f, t in rows)
    (args.out / "LICENSE.md").write_text(LICENSE.format(package=PACKAGE, version=VERSION),
                                         encoding="utf-8")
    (args.out / "SOURCE.json").write_text(json.dumps({
        "script": "examples/make_fashion_mnist_dataset.py",
        "debian_package": {"name": PACKAGE, "version": VERSION, "sha256": DEB_SHA256},
        "files_sha256": FILES, "split": args.split, "per_class": args.per_class,
        "images": len(rows), "per_class_counts": dict(zip(CLASSES, kept)),
        "template": args.template,
    }, indent=1) + "\n", encoding="utf-8")

    size = sum(p.stat().st_size for p in args.out.glob("*/*.png")) / 1e6
    print(f"wrote {len(rows)} images ({size:.1f} MB) of the {args.split} split in "
          f"{len(CLASSES)} class folders to {args.out}; read {read - started:.1f} s, "
          f"write {time.time() - read:.1f} s")
    print(f"  e.g. {rows[0][0]}\t{rows[0][1]}")
    print(f"next: msclip prepare --input {args.out / 'pairs.tsv'} --out DIR --resolution 64")


if __name__ == "__main__":
    main()
