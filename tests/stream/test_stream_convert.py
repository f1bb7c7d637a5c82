"""stream.convert: range and matrix honoured, 10-bit to 8-bit, RGB -> yuv420p exact to the formula."""

from __future__ import annotations

import av
import numpy as np
import pytest

from stream.convert import ConvertError, frame_to_rgb, rgb_to_yuv420p

# AVColorSpace / AVColorRange codes
BT709, BT601 = 1, 6
LIMITED, FULL = 1, 2
KR_KB = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}


def _rgb_from_ycbcr(y: float, cb: float, cr: float, matrix: str, full: bool) -> np.ndarray:
    """Reference YCbCr (8-bit code values) -> RGB 0..255 (ITU formulas)."""
    kr, kb = KR_KB[matrix]
    kg = 1 - kr - kb
    if full:
        yn, pb, pr = y / 255, (cb - 128) / 255, (cr - 128) / 255
    else:
        yn, pb, pr = (y - 16) / 219, (cb - 128) / 224, (cr - 128) / 224
    r = yn + 2 * (1 - kr) * pr
    b = yn + 2 * (1 - kb) * pb
    g = (yn - kr * r - kb * b) / kg
    return np.clip(np.array([r, g, b]) * 255, 0, 255)


def _solid_yuv(y: int, cb: int, cr: int, *, colorspace: int, color_range: int, fmt: str = "yuv420p") -> av.VideoFrame:
    h, w = 16, 16
    if fmt == "yuv420p":
        planes = np.empty((h * 3 // 2, w), np.uint8)
        planes[:h], planes[h : h + h // 4], planes[h + h // 4 :] = y, cb, cr
    else:  # yuv420p10le: same code values scaled by 4
        planes = np.empty((h * 3 // 2, w), np.uint16)
        planes[:h], planes[h : h + h // 4], planes[h + h // 4 :] = y * 4, cb * 4, cr * 4
    frame = av.VideoFrame.from_ndarray(planes, format=fmt)
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


@pytest.mark.parametrize(
    ("matrix", "code", "full", "rng"),
    [("bt709", BT709, False, LIMITED), ("bt601", BT601, False, LIMITED), ("bt709", BT709, True, FULL)],
)
@pytest.mark.parametrize("fmt", ["yuv420p", "yuv420p10le"])
def test_frame_to_rgb_honours_matrix_and_range(matrix: str, code: int, full: bool, rng: int, fmt: str) -> None:
    y, cb, cr = 120, 90, 180  # a saturated orange-red, far from grey so matrices differ visibly
    rgb = frame_to_rgb(_solid_yuv(y, cb, cr, colorspace=code, color_range=rng, fmt=fmt))
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    expected = _rgb_from_ycbcr(y, cb, cr, matrix, full)
    np.testing.assert_allclose(rgb[8, 8], expected, atol=3)


def test_matrices_give_different_colours() -> None:
    a = frame_to_rgb(_solid_yuv(120, 90, 180, colorspace=BT709, color_range=LIMITED)).astype(int)
    b = frame_to_rgb(_solid_yuv(120, 90, 180, colorspace=BT601, color_range=LIMITED)).astype(int)
    assert np.abs(a - b).max() > 10


@pytest.mark.parametrize("matrix", ["bt709", "bt601"])
def test_rgb_to_yuv420p_formula_and_tags(matrix: str) -> None:
    colour = np.array([200, 30, 90], np.uint8)
    frame = rgb_to_yuv420p(np.broadcast_to(colour, (32, 48, 3)).copy(), matrix=matrix)
    assert (frame.format.name, frame.width, frame.height) == ("yuv420p", 48, 32)
    assert frame.color_range == LIMITED and frame.colorspace == (BT709 if matrix == "bt709" else BT601)
    kr, kb = KR_KB[matrix]
    r, g, b = colour / 255.0
    yn = kr * r + (1 - kr - kb) * g + kb * b
    expected = (16 + 219 * yn, 128 + 224 * (b - yn) / (2 * (1 - kb)), 128 + 224 * (r - yn) / (2 * (1 - kr)))
    planes = frame.to_ndarray()
    got = (planes[0, 0], planes[32, 0], planes[32 + 8, 0])
    np.testing.assert_allclose(np.array(got, float), expected, atol=1)
    np.testing.assert_allclose(frame_to_rgb(frame)[5, 5], colour, atol=3)  # round trip


def test_odd_size_padded_to_even() -> None:
    ys, xs = np.mgrid[0:17, 0:33]
    rgb = np.stack([xs * 7, ys * 14, 255 - xs * 7], axis=-1).astype(np.uint8)  # smooth gradient
    frame = rgb_to_yuv420p(rgb)
    assert (frame.width, frame.height) == (34, 18)
    luma = frame.to_ndarray()[:18]
    np.testing.assert_array_equal(luma[:, 33], luma[:, 32])  # padding repeats the edge
    np.testing.assert_array_equal(luma[17], luma[16])
    back = frame_to_rgb(frame)
    assert np.abs(back[:17, :33].astype(int) - rgb).mean() < 4


def test_frame_to_rgb_scales() -> None:
    frame = _solid_yuv(120, 90, 180, colorspace=BT709, color_range=LIMITED)
    assert frame_to_rgb(frame, size=(40, 24)).shape == (24, 40, 3)


def test_bad_array() -> None:
    with pytest.raises(ConvertError):
        rgb_to_yuv420p(np.zeros((4, 4), np.uint8))
    with pytest.raises(ConvertError):
        rgb_to_yuv420p(np.zeros((4, 4, 3), np.float32))
