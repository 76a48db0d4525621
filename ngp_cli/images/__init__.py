"""Image input/output for ngp: reading, tile-by-tile writing, dtype scaling and heat-map colouring.

Arrays are always ``(H, W, C)`` with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA), in the file's *stored* dtype
(``uint8``, ``uint16``, ``float16`` or ``float32``). Nothing is converted to float32 as a whole: a 1-gigapixel 8-bit RGB
image stays ~3 GB; callers convert small crops/tiles with :func:`to_float`.

Formats (chosen by the file's signature bytes; the suffix must still be one of :data:`SUPPORTED_SUFFIXES`):

* PNG (``.png``): 1/2/4/8-bit gray, gray+alpha, RGB, RGBA and palette images are decoded by Pillow (through imageio);
  palette images come back as RGB, or RGBA when they carry transparency (tRNS). 16-bit PNGs are decoded by a small
  numpy decoder (:mod:`ngp_cli.images.png`) because Pillow silently truncates 16-bit colour PNGs to 8 bits (pypng
  would do, but decodes ~5x slower in pure Python); it inflates at most the byte count the header's size implies, so
  image data that inflates to more is refused. Gamma/colour-profile chunks are ignored (values are returned as stored).
* JPEG (``.jpg``, ``.jpeg``): Pillow through imageio; gray stays 1 channel, CMYK/YCbCr are converted to RGB.
  EXIF orientation is *not* applied (like instant-ngp's stb_image loader): pixels come back as stored.
* TIFF (``.tif``, ``.tiff``): tifffile, first series at full resolution, first page of a stack. Uncompressed contiguous
  data in native byte order is returned as a read-only ``np.memmap`` (no load). Compressed TIFFs other than deflate
  need the optional ``imagecodecs`` package. Palette TIFFs are expanded to RGB, min-is-white is inverted, 1/2/4-bit
  gray is scaled to 0..255, float64 is narrowed to float32.
* OpenEXR (``.exr``): OpenEXR 3.x bindings (``OpenEXR.File``), first part. Channels are ordered R,G,B[,A] or Y[,A]
  (a single channel of any name is read as gray); other channels (Z, AOVs) are ignored. Half channels come back as
  float16, float channels as float32 (mixed: float32). HDR values (> 1, negative) are kept as they are.

Size limit: :func:`read_image` refuses an image whose *declared* width x height exceeds ``max_pixels`` (default
:data:`DEFAULT_MAX_PIXELS`, 2^28; 0 = no limit) before decoding anything: PNG from IHDR, JPEG from Pillow's lazy open,
TIFF from its first series' shape, EXR from its header's data window. A 200-byte file claiming 60000x60000 pixels is
thus refused instead of allocating gigabytes. Pillow's own decompression-bomb guard is set to the same limit.

Errors: every failure caused by the input file raises :class:`~ngp_cli.errors.DataError` (exit 4) and every failure to
write raises :class:`~ngp_cli.errors.OutputError` (exit 6), each with a one-line message that starts with the path.
Invalid arguments from code (wrong tile shape, dtype mismatch) raise ``ValueError``/``TypeError``.

Heavy libraries (imageio, Pillow, tifffile, OpenEXR) are imported lazily so that importing this package stays cheap.
"""

from .checks import DEFAULT_MAX_PIXELS
from .dtypes import from_float, to_float, value_scale
from .heatmap import colormap
from .read import SUPPORTED_SUFFIXES, read_image
from .writer import ImageWriter, TempFileOutput, write_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "ImageWriter",
    "TempFileOutput",
    "colormap",
    "from_float",
    "read_image",
    "to_float",
    "value_scale",
    "write_image",
]
