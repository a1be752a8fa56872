"""Decompresses Hadoop-framed Snappy objects with python-snappy's Hadoop stream decompressor (a
reader nobody here wrote, pinned in tests/requirements.txt) and prints their lines as JSON.

    read_hadoop_snappy.py FILE...
"""

import json
import sys

import snappy


def main():
    lines = []
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            data = f.read()
        text = snappy.HadoopStreamDecompressor().decompress(data)
        lines.extend(text.decode("utf-8").splitlines())
    print(json.dumps(lines))


if __name__ == "__main__":
    main()
