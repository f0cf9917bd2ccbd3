"""Image loading: every mode to RGB, the sizing policy, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from framework.errors import InputError
from framework.images import fit_image, load_image, load_image_tensor, parse_size, pil_to_tensor, tensor_to_pil


def _roundtrip(tmp_path, img: Image.Image, name: str) -> Image.Image:
    path = tmp_path / name
    img.save(path)
    return load_image(path)


def test_modes_convert_to_rgb(tmp_path) -> None:
    gray = Image.fromarray(np.full((8, 12), 100, np.uint8), "L")
    out = _roundtrip(tmp_path, gray, "gray.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (100, 100, 100)

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = _roundtrip(tmp_path, rgba, "rgba.png")
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 255)

    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    out = _roundtrip(tmp_path, pal, "pal.png")
    assert out.getpixel((1, 1)) == (10, 200, 30) and out.getpixel((0, 0)) == (0, 0, 0)

    deep = Image.fromarray(np.array([[0, 65535], [32768, 1000]], dtype=np.uint16))
    out = _roundtrip(tmp_path, deep, "deep.png")
    assert out.getpixel((1, 0)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((0, 1))[0] in (127, 128)

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    out = _roundtrip(tmp_path, cmyk, "cmyk.jpg")
    r, g, b = out.getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60


def test_sizing_policy() -> None:
    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    wide.paste((255, 255, 255), (100, 0, 200, 100))  # a white center square
    fitted = fit_image(wide, None, 64, 64)
    assert fitted.size == (64, 64)
    assert np.asarray(fitted).mean() > 250  # the center crop keeps the white square only
    assert fit_image(wide, (128, 64), 64, 64).size == (128, 64)
    with pytest.raises(InputError, match="multiples of 64"):
        fit_image(wide, (100, 64), 64, 64)
    assert parse_size("768x512") == (768, 512) and parse_size("512") == (512, 512)
    with pytest.raises(InputError, match="WxH"):
        parse_size("big")


def test_tensor_roundtrip() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    t = pil_to_tensor(Image.fromarray(arr))
    assert t.shape == (1, 3, 16, 20) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(t)[0]), arr)


def test_bad_files(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(InputError, match="not an image"):
        load_image(junk)
    good = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(good)
    cut = tmp_path / "truncated.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError, match="corrupt|not an image"):
        load_image(cut)
    with pytest.raises(InputError, match="directory"):
        load_image_tensor(tmp_path, 32, 4)


def test_an_image_too_large_to_decode_safely_is_one_error(tmp_path, monkeypatch) -> None:
    """Pillow's decompression-bomb guard (over 2 × MAX_IMAGE_PIXELS) becomes an InputError."""
    path = tmp_path / "huge.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is then a "bomb"
    with pytest.raises(InputError, match="too large to decode safely"):
        load_image(path)
