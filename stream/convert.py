"""The only YUV <-> RGB conversion in the project.

Decoding: any decoded ``av.VideoFrame`` (8- or 10-bit, limited or full range, BT.601/709/2020) ->
RGB uint8 (H, W, 3), through swscale with the source's own matrix and range passed explicitly (PyAV's
default reformat ignores them, PyAV #2149).

Encoding: RGB uint8 -> a yuv420p ``av.VideoFrame`` in BT.709 limited range (what the sink tags),
through OpenCV matrix multiplies and a 2x2 box average for chroma. Measured at 720p on the shared
2-core machine: 2.5 ms idle-ish / 3.7 ms under load, versus 4.6 / 4.1 ms for PyAV's reformat to the same
BT.709 limited range (``pipelines.bench.io`` prints both). OpenCV's own RGB->I420 (0.3 ms) is BT.601 only.
"""

from __future__ import annotations

import logging

import av
import cv2
import numpy as np

logger = logging.getLogger(__name__)

# AVColorSpace codes (libavutil/pixfmt.h) -> our matrix names
_AV_MATRIX = {1: "bt709", 5: "bt601", 6: "bt601", 9: "bt2020", 10: "bt2020"}
# AVColorRange codes -> our range names
_AV_RANGE = {1: "tv", 2: "pc"}
# our matrix names -> swscale colourspace names understood by VideoFrame.reformat
_SWS_MATRIX = {"bt709": "itu709", "bt601": "itu601", "bt2020": "bt2020"}
_SWS_RANGE = {"tv": "MPEG", "pc": "JPEG"}
# FFmpeg's convention for untagged video: HD (height >= 720) is BT.709, SD is BT.601
HD_MIN_HEIGHT_PX = 720
# Kr, Kb luma coefficients per matrix (ITU-R BT.601 / BT.709 / BT.2020)
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}
# 8-bit limited range: Y in [16, 235], chroma in [16, 240] centred on 128
_Y_OFFSET, _Y_SCALE, _C_OFFSET, _C_SCALE = 16.0, 219.0 / 255.0, 128.0, 224.0 / 255.0


class ConvertError(ValueError):
    """An array that cannot be turned into a video frame (wrong dtype or shape)."""


def matrix_of(frame: av.VideoFrame) -> str:
    """Colour matrix tag of a decoded frame: ``bt709`` | ``bt601`` | ``bt2020`` | ``unknown``."""
    return _AV_MATRIX.get(int(frame.colorspace), "unknown")


def range_of(frame: av.VideoFrame) -> str:
    """Colour range tag of a decoded frame: ``tv`` (limited) | ``pc`` (full) | ``unknown``."""
    return _AV_RANGE.get(int(frame.color_range), "unknown")


def resolve_matrix(matrix: str, height: int) -> str:
    """The matrix to use for conversion: the tag, or FFmpeg's guess by height when untagged."""
    if matrix in _SWS_MATRIX:
        return matrix
    return "bt709" if height >= HD_MIN_HEIGHT_PX else "bt601"


def resolve_range(color_range: str, pix_fmt: str) -> str:
    """The range to use: the tag, full for the ``yuvj*`` formats, else limited."""
    if color_range in _SWS_RANGE:
        return color_range
    return "pc" if pix_fmt.startswith("yuvj") else "tv"


def frame_to_rgb(
    frame: av.VideoFrame,
    *,
    size: tuple[int, int] | None = None,
    matrix: str | None = None,
    color_range: str | None = None,
) -> np.ndarray:
    """Convert a decoded frame to RGB.

    Args:
        frame: Any decoded video frame (8/10/12-bit YUV, NV12, RGB, gray...).
        size: Optional output (width, height) in px; scaling happens in the same swscale pass.
        matrix: Override of the frame's matrix tag (``bt709``/``bt601``/``bt2020``).
        color_range: Override of the frame's range tag (``tv``/``pc``).

    Returns:
        RGB uint8 array (H, W, 3), C-contiguous.
    """
    pix_fmt = frame.format.name
    width, height = size if size is not None else (frame.width, frame.height)
    if pix_fmt == "rgb24" and size is None:
        return frame.to_ndarray()
    mat = resolve_matrix(matrix or matrix_of(frame), frame.height)
    rng = resolve_range(color_range or range_of(frame), pix_fmt)
    rgb = frame.reformat(
        width=width,
        height=height,
        format="rgb24",
        src_colorspace=_SWS_MATRIX[mat],
        dst_colorspace=_SWS_MATRIX[mat],
        src_color_range=_SWS_RANGE[rng],
        dst_color_range="JPEG",
        interpolation="BILINEAR" if size is not None else None,
    )
    return rgb.to_ndarray()


def _rgb_to_yuv_matrix(matrix: str) -> np.ndarray:
    """3x4 affine matrix RGB (0..255) -> limited-range Y, Cb, Cr (8-bit), rows in OpenCV order."""
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    y = np.array([kr, kg, kb])
    cb = (np.array([0.0, 0.0, 1.0]) - y) / (2.0 * (1.0 - kb))
    cr = (np.array([1.0, 0.0, 0.0]) - y) / (2.0 * (1.0 - kr))
    rows = [
        np.append(y * _Y_SCALE, _Y_OFFSET),
        np.append(cb * _C_SCALE, _C_OFFSET),
        np.append(cr * _C_SCALE, _C_OFFSET),
    ]
    return np.stack(rows).astype(np.float32)


_MATRICES = {name: _rgb_to_yuv_matrix(name) for name in _KR_KB}


def even_size(width: int, height: int) -> tuple[int, int]:
    """Smallest even (width, height) that holds the frame: 4:2:0 encoders need even sizes."""
    return width + (width & 1), height + (height & 1)


def rgb_to_yuv420p(rgb: np.ndarray, *, matrix: str = "bt709") -> av.VideoFrame:
    """Convert RGB to a limited-range yuv420p frame ready for the encoder.

    Odd sizes are padded to even by repeating the last row/column (4:2:0 needs even sizes).

    Args:
        rgb: (H, W, 3) uint8 RGB.
        matrix: ``bt709`` (default, what the sink tags) | ``bt601`` | ``bt2020``.

    Returns:
        A yuv420p ``av.VideoFrame`` of the even size, tagged with matrix and limited range.

    Raises:
        ConvertError: Not an (H, W, 3) uint8 array.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConvertError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    even_w, even_h = even_size(width, height)
    if (even_w, even_h) != (width, height):
        rgb = cv2.copyMakeBorder(rgb, 0, even_h - height, 0, even_w - width, cv2.BORDER_REPLICATE)
    half = (even_w // 2, even_h // 2)
    # Chroma of the 2x2-averaged RGB equals the average chroma (the transform is affine). A bilinear
    # resize at exactly half size is that 2x2 box average, and 3-channel transforms hit OpenCV's SIMD path.
    rgb_half = cv2.resize(rgb, half, interpolation=cv2.INTER_LINEAR)
    planes = np.empty((even_h * 3 // 2, even_w), dtype=np.uint8)
    planes[:even_h] = cv2.transform(rgb, _MATRICES[matrix])[:, :, 0]
    chroma = cv2.transform(rgb_half, _MATRICES[matrix])
    quarter = half[0] * half[1]
    flat = planes[even_h:].reshape(-1)
    flat[:quarter] = chroma[:, :, 1].reshape(-1)
    flat[quarter:] = chroma[:, :, 2].reshape(-1)
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    frame.colorspace = {"bt709": 1, "bt601": 6, "bt2020": 9}[matrix]
    frame.color_range = 1
    return frame
