"""PNG in numpy: the 16-bit decoder (with bounded inflation) and the encoder :class:`~ngp_cli.images.ImageWriter` uses.

Why a decoder of our own: Pillow silently truncates 16-bit colour PNGs to 8 bits (8-bit PNGs go through Pillow).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .dtypes import _CHUNK_ELEMS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunks(data: bytes):
    """Yield (type, body) of each PNG chunk after the signature, checking lengths and CRCs; stops after IEND."""
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("file is truncated (incomplete chunk header)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"file is truncated ({ctype.decode('latin-1')} chunk cut short)")
        body = data[pos + 8 : end]
        if zlib.crc32(ctype + body) != int.from_bytes(data[end : end + 4], "big"):
            raise ValueError(f"CRC error in {ctype.decode('latin-1')} chunk")
        yield ctype, body
        if ctype == b"IEND":
            return
        pos = end + 4


# Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _decode_png16(data: bytes) -> np.ndarray:
    """Decode a 16-bit PNG (gray, gray+alpha, RGB, RGBA; plain or Adam7-interlaced) to ``(H, W, C)`` uint16.

    Why not Pillow: it converts 16-bit colour PNGs to 8 bits. A tRNS colour key on gray/RGB becomes an alpha channel
    (0 where the pixel equals the key, 65535 elsewhere), like Pillow does for 8-bit images.
    """
    width, height, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if channels is None or depth != 16:
        raise ValueError(f"invalid PNG header (bit depth {depth} with colour type {ctype})")
    if comp != 0 or filt != 0 or interlace not in (0, 1):
        raise ValueError("invalid PNG header (unknown compression, filter or interlace method)")
    bpp = 2 * channels
    idat, trns = [], None
    for kind, body in _png_chunks(data):
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            trns = body
    if not idat:
        raise ValueError("no image data (IDAT chunk)")

    if interlace == 0:
        passes = [(0, 0, 1, 1, width, height)]
    else:
        passes = []
        for x0, y0, dx, dy in _ADAM7:
            pw, ph = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            if pw > 0 and ph > 0:  # empty passes have no bytes at all, not even filter bytes
                passes.append((x0, y0, dx, dy, pw, ph))
    expected = sum(ph * (1 + pw * bpp) for *_, pw, ph in passes)
    raw = _inflate_bounded(idat, expected)
    if len(raw) < expected:
        raise ValueError(f"image data is too short ({len(raw)} of {expected} bytes)")
    buf = np.frombuffer(raw, dtype=np.uint8)

    if interlace == 0:
        planes = _png_unfilter(buf[:expected], height, width, bpp)
    else:
        planes = np.empty((height, width, bpp), np.uint8)
        pos = 0
        for x0, y0, dx, dy, pw, ph in passes:
            n = ph * (1 + pw * bpp)
            planes[y0::dy, x0::dx] = _png_unfilter(buf[pos : pos + n], ph, pw, bpp)
            pos += n
    img = planes.view(">u2").astype(np.uint16)  # big-endian samples -> native uint16, (H, W, C)

    if trns is not None and ctype in (0, 2) and len(trns) >= 2 * channels:
        key = np.frombuffer(trns[: 2 * channels], dtype=">u2").astype(np.uint16)
        opaque = np.any(img != key, axis=-1)
        alpha = np.where(opaque, np.uint16(65535), np.uint16(0)).astype(np.uint16)
        img = np.concatenate([img, alpha[..., None]], axis=-1)
    return img


def _inflate_bounded(blocks: list[bytes], limit: int) -> bytearray:
    """Inflate the zlib stream split over ``blocks`` (the IDAT bodies), producing at most ``limit`` bytes: a stream
    that inflates to more (a decompression bomb behind a small declared size) raises ValueError after at most
    ``limit + 1`` bytes of output, and so does a stream that ends early (no end-of-stream marker)."""
    dec = zlib.decompressobj()
    out = bytearray()
    for body in blocks:
        # max_length >= 1 here (0 would mean "unbounded"): out never exceeds limit past the check below.
        out += dec.decompress(body, limit + 1 - len(out))
        if len(out) > limit:
            raise ValueError(f"image data inflates to more than the {limit} bytes its declared size needs")
        if dec.eof:
            break
    if not dec.eof:
        raise ValueError("compressed image data is truncated")
    return out  # no bytes() copy: np.frombuffer reads a bytearray as it is


def _png_unfilter(buf: np.ndarray, h: int, w: int, bpp: int) -> np.ndarray:
    """Undo PNG row filters: ``buf`` holds ``h`` rows of (filter byte + w*bpp bytes); returns (h, w, bpp) uint8.

    Sub/Average/Paeth depend on the already-decoded left neighbour, so a row cannot be decoded in one numpy step.
    Instead pixels are decoded one anti-diagonal (r + x = d) at a time: every pixel on a diagonal depends only on
    earlier diagonals (left, up, up-left), so each step is vectorised and there are only h + w - 1 steps. The image is
    zero-padded by one row on top and one column on the left (the "outside" neighbours PNG defines as 0); in the
    flattened padded array a diagonal is then a plain strided slice with step w, decoded in place.
    """
    rows = buf.reshape(h, 1 + w * bpp)
    ftype = rows[:, 0]
    if int(ftype.max()) > 4:
        raise ValueError(f"invalid PNG row filter type {int(ftype.max())}")
    data = rows[:, 1:].reshape(h, w, bpp)
    if not ftype.any():  # no filtering at all
        return data
    padded = np.zeros((h + 1, w + 1, bpp), np.uint8)
    padded[1:, 1:] = data
    flat = padded.reshape(-1, bpp)
    ftype = ftype.astype(np.intp)
    # Pixel (r, x) lives at flat index (r + 1) * (w + 1) + x + 1 = r * w + (d + w + 2) with d = r + x.
    for d in range(h + w - 1):
        r0, r1 = max(0, d - w + 1), min(h - 1, d)
        start, stop = r0 * w + d + w + 2, r1 * w + d + w + 3
        cur = flat[start:stop:w]
        a = flat[start - 1 : stop - 1 : w].astype(np.int16)  # left
        b = flat[start - w - 1 : stop - w - 1 : w].astype(np.int16)  # up
        c = flat[start - w - 2 : stop - w - 2 : w].astype(np.int16)  # up-left
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.choose(ftype[r0 : r1 + 1, None], (0, a, b, (a + b) >> 1, paeth))
        cur += pred.astype(np.uint8)  # modulo-256 addition, written into `padded`
    return padded[1:, 1:]


def _png_filter(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Filter rows for PNG encoding: (n, L) uint8 rows + the row above the first -> (n, 1 + L) with filter bytes.

    Per row the filter with the smallest sum of absolute signed residuals is chosen (libpng's default heuristic).
    """
    up = np.concatenate([prev[None], raw[:-1]], axis=0)
    left = np.zeros_like(raw)
    left[:, bpp:] = raw[:, :-bpp]
    upleft = np.zeros_like(raw)
    upleft[:, bpp:] = up[:, :-bpp]
    a, b, c = left.astype(np.int16), up.astype(np.int16), upleft.astype(np.int16)
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)
    del pa, pb, pc, c
    avg = ((a + b) >> 1).astype(np.uint8)
    del a, b
    cands = (raw, raw - left, raw - up, raw - avg, raw - paeth)  # uint8 arithmetic wraps modulo 256
    scores = np.stack([np.abs(x.view(np.int8).astype(np.int32)).sum(axis=1) for x in cands])
    best = np.argmin(scores, axis=0)
    out = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = np.choose(best[:, None], cands)
    return out


def _png_chunk(fh, kind: bytes, body: bytes) -> None:
    fh.write(struct.pack(">I", len(body)) + kind)
    fh.write(body)
    fh.write(struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _write_png(fh, img: np.ndarray) -> None:
    """Encode ``img`` (H, W, C) uint8/uint16 as a non-interlaced PNG, streaming row chunks through zlib."""
    h, w, c = img.shape
    depth = 8 * img.dtype.itemsize
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = c * img.dtype.itemsize
    fh.write(_PNG_SIGNATURE)
    _png_chunk(fh, b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    comp = zlib.compressobj(6)
    prev = np.zeros(w * bpp, np.uint8)
    rows = max(1, _CHUNK_ELEMS // (w * bpp))
    for r0 in range(0, h, rows):
        chunk = np.ascontiguousarray(img[r0 : r0 + rows], dtype=">u2" if depth == 16 else np.uint8)
        raw = chunk.view(np.uint8).reshape(chunk.shape[0], w * bpp)
        filtered = _png_filter(raw, prev, bpp)
        prev = raw[-1].copy()
        body = comp.compress(filtered)
        if body:
            _png_chunk(fh, b"IDAT", body)
    _png_chunk(fh, b"IDAT", comp.flush())
    _png_chunk(fh, b"IEND", b"")
