#!/usr/bin/env bash
# Remake the shipped int8 melcnn (src/melgenre/weights/melcnn-int8.onnx) from the shipped float package:
# activation ranges (MinMax) from every window of 32 of the real dev clips, evenly spread over the sorted list;
# weights per channel in the reduced range [-64, 64], which AVX2 CPUs without VNNI compute without saturating
# (melgenre.models.quantize_int8). Deterministic: the same clips, package and onnxruntime give the same file.
# Agreement with the float model is tested in tests/test_int8.py (every label the same on 21 dev clips,
# probabilities within 0.05; measured on all 202: every label the same, within 0.030).
set -euo pipefail
cd "$(dirname "$0")/.."
clips=${MELGENRE_SHARED_DATA:-../shared/data}/gtzan-dev
melgenre export melcnn --int8 "$clips" --calibration-files 32 --out src/melgenre/weights/melcnn-int8.onnx
