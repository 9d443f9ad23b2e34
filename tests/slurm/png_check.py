#!/usr/bin/env python3
"""tests/slurm/png_check.py FILE.png [RRGGBB...]: decode a PNG (8-bit RGB/RGBA/grey,
not interlaced; what gnuplot's pngcairo writes) with the standard library and print
"WIDTHxHEIGHT colours=N ink=F", where ink is the fraction of pixels that are not the background
(the most common colour), then for each RRGGBB "RRGGBB=N": pixels within 24 per channel of that
colour (a curve's colour). Exit 1 if the file is not such a PNG."""
import struct
import sys
import zlib
from collections import Counter


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError("bad CRC in chunk %r" % kind)
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or interlace or ctype not in (0, 2, 6):
        raise ValueError("unsupported PNG (depth %d, colour type %d, interlace %d)" % (depth, ctype, interlace))
    bpp = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    pixels = Counter()
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(0, stride, bpp):
            pixels[bytes(line[x:x + min(bpp, 3)])] += 1
        prev = line
    return w, h, pixels


w, h, px = decode(sys.argv[1])
bg = px.most_common(1)[0][1]
ink = 1.0 - bg / float(w * h)
print("%dx%d colours=%d ink=%.4f" % (w, h, len(px), ink))
for hexc in sys.argv[2:]:
    want = bytes.fromhex(hexc)
    n = sum(c for p, c in px.items() if len(p) == 3 and all(abs(p[i] - want[i]) <= 24 for i in range(3)))
    print("%s=%d" % (hexc, n))
