"""Pass DVC's stderr through, but for its warnings about outputs it has no hash for yet, which a
workspace without dvc.lock gives once per output before anything runs (they are not a problem:
the stages then make those outputs). Byte by byte, so progress bars (lines that end in \r) still
move as they are drawn."""

import os
import sys

NOISE = b"WARNING: No file hash info found for "


def main() -> None:
    out = sys.stderr.buffer
    held = b""  # the start of a line that may be noise, not shown yet
    passing = False  # the current line is not noise: shown as it comes
    while chunk := os.read(0, 65536):
        for piece in chunk.splitlines(keepends=True):
            ends = piece.endswith((b"\n", b"\r"))
            if passing:
                out.write(piece)
            else:
                held += piece
                if not (held.startswith(NOISE) or NOISE.startswith(held)):
                    out.write(held)
                    passing, held = True, b""
                elif ends and held.startswith(NOISE):
                    held = b""  # a whole noise line: dropped
            if ends:
                passing = False
        out.flush()
    out.write(held)
    out.flush()


if __name__ == "__main__":
    main()
