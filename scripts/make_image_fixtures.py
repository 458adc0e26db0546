"""Writes the image fixtures of tests/prepare_data.rs into tests/data/images/, with Pillow
(the library open_clip's and CLIP_benchmark's evaluation transforms run on):

- cmyk.jpg: a 24 x 16 CMYK JPEG (the image crate cannot write one), solid C=0 M=255 Y=255 K=0.
- resize_source_WxH.png: RGB images with hard edges, gradients and noise, and for each
  resize_reference_WxH_R.rgb: what torchvision's evaluation transform (Resize(R, BICUBIC) then
  CenterCrop(R)) makes of it on PIL, as raw HWC RGB bytes, the oracle for msclip's own resize
  and crop: shrinking a landscape and a portrait image, and enlarging a small one.

    pip install pillow torchvision
    python3 scripts/make_image_fixtures.py tests/data/images
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import transforms

out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/images")
out.mkdir(parents=True, exist_ok=True)

Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(out / "cmyk.jpg", quality=95)

rng = np.random.default_rng(0)
evaluation = lambda r: transforms.Compose(
    [transforms.Resize(r, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(r)]
)
for (w, h), r in [((97, 61), 32), ((130, 301), 48), ((23, 13), 40)]:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // (w - 1)), (y * 255 // (h - 1)), ((x // 8 + y // 8) % 2) * 255], axis=-1)
    rgb[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = [250, 10, 120]
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    source = Image.fromarray(rgb, "RGB")
    source.save(out / f"resize_source_{w}x{h}.png")
    (out / f"resize_reference_{w}x{h}_{r}.rgb").write_bytes(np.asarray(evaluation(r)(source)).tobytes())
print("written to", out)
