"""Write the ONNX twin of each shipped package (src/melgenre/weights/<name>.onnx beside <name>.json).

The core install runs the shipped models from these files with ONNX Runtime, without torch
(melgenre.package.onnx_twin). Run after a package changes (the twin must hold the package's weights:
load_model refuses a twin of another model id; tests/test_lean.py checks every twin against its package):

    python tools/export_shipped.py            # every shipped package
    python tools/export_shipped.py default    # one
"""

from __future__ import annotations

import sys

from melgenre.export import export_onnx_file
from melgenre.package import DEFAULT_MODEL_DIR, shipped_models


def main(names: list[str]) -> None:
    """Export the named shipped packages (default: all of them) to their ONNX twins."""
    packages = [n for n in shipped_models() if DEFAULT_MODEL_DIR.joinpath(f"{n}.json").is_file()]
    for name in names or packages:
        if name not in packages:
            raise SystemExit(f"{name}: not a shipped package ({', '.join(packages)})")
        out = export_onnx_file(name, str(DEFAULT_MODEL_DIR.joinpath(f"{name}.onnx")))
        print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
