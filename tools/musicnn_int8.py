"""int8 variants of the default model's musicnn against float, on the real dev clips (issue 33).

For each variant of ONNX Runtime's static quantization (calibrated on every window of 32 dev clips, as
tools/make_int8.sh does for melcnn): the labels of all 202 dev clips (5 windows each, the default's
6-s hop) against the float ONNX model's, the largest probability differences, and the network's time
per window against float's, measured in one run, interleaved (batch 8 as the library job runs it).

    PYTHONPATH=src nice -n 10 python tools/musicnn_int8.py --clips ../shared/data/gtzan-dev --out int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _windows(files: list[Path], preset) -> list[np.ndarray]:
    from melgenre import audio
    from melgenre.windows import window_images

    return [window_images(audio.load(f, sr=preset.sr).samples, preset)[0] for f in files]


def quantize(src: Path, dst: Path, calibration: list[np.ndarray], fmt: str, per_channel: bool, reduce_range: bool,
             weight: str, ops: list[str] | None, method: str, exclude: list[str] | None = None) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"mel": np.ascontiguousarray(b[:, None], dtype=np.float32)}

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        quantize_static(str(prepared), str(dst), Reader(),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8 if weight == "s8" else QuantType.QUInt8,
                        op_types_to_quantize=ops, nodes_to_exclude=exclude or [],
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile,
                                          "entropy": CalibrationMethod.Entropy}[method],
                        # MinMax keeps only each tensor's min and max per batch (ReduceMin/ReduceMax outputs)
                        extra_options={})


def session(path: Path):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def run(sess, images: np.ndarray, batch: int = 8) -> np.ndarray:
    x = np.ascontiguousarray(images[:, None], dtype=np.float32)
    return np.concatenate([sess.run(["logits"], {"mel": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


VARIANTS = {
    "qdq u8s8 per-channel reduced range, MinMax (melcnn-int8's)":
        dict(fmt="qdq", per_channel=True, reduce_range=True, weight="s8", ops=None, method="minmax"),
    "qdq u8s8 per-channel reduced range, Conv only":
        dict(fmt="qdq", per_channel=True, reduce_range=True, weight="s8", ops=["Conv"], method="minmax"),
    "qoperator u8s8 per-channel reduced range, Conv only":
        dict(fmt="qop", per_channel=True, reduce_range=True, weight="s8", ops=["Conv"], method="minmax"),
    "qdq u8s8 per-tensor reduced range, Conv only":
        dict(fmt="qdq", per_channel=False, reduce_range=True, weight="s8", ops=["Conv"], method="minmax"),
    "qdq u8u8 per-channel, Conv only":
        dict(fmt="qdq", per_channel=True, reduce_range=False, weight="u8", ops=["Conv"], method="minmax"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", required=True, type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "melgenre-musicnn-int8")
    p.add_argument("--variants", help="comma-separated indices of VARIANTS (default: all)")
    p.add_argument("--timing-windows", type=int, default=96)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--timing-only", action="store_true", help="skip the 202 clips' agreement (timing of the cached files)")
    args = p.parse_args()

    from melgenre import audio
    from melgenre.export import write_onnx
    from melgenre.inference import load_model, softmax, tempered
    from melgenre.models import int8_cpu
    from melgenre.package import load_torch, resolve_shipped

    args.work.mkdir(parents=True, exist_ok=True)
    model = load_model("default", backend="torch")
    files = audio.expand_paths([args.clips])
    calib_files = [files[i * len(files) // 32] for i in range(32)]
    t0 = time.time()
    calibration = _windows(calib_files, model.preset)  # every window (3-s hop), as make_int8.sh
    clips = _windows(files, model.window_preset)  # what predict scores: 5 windows (6-s hop)
    print(f"{len(files)} clips, {sum(map(len, calibration))} calibration windows ({time.time() - t0:.0f} s)",
          file=sys.stderr, flush=True)
    float_path = args.work / "float.onnx"
    module, card = load_torch(resolve_shipped("default"))
    write_onnx(module, card, float_path)
    sessions = {"float": session(float_path)}
    names = list(VARIANTS)
    chosen = [names[int(i)] for i in args.variants.split(",")] if args.variants else names
    for k, name in enumerate(names):
        if name not in chosen:
            continue
        dst = args.work / f"int8-{k}.onnx"
        if not dst.is_file():
            t0 = time.time()
            quantize(float_path, dst, [c[i:i + 8] for c in calibration for i in range(0, len(c), 8)], **VARIANTS[name])
            print(f"quantized {name} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        sessions[name] = session(dst)
    flat = np.concatenate(clips)
    ends = np.cumsum([len(c) for c in clips])[:-1]
    outputs = {}
    for name, sess in ([] if args.timing_only else sessions.items()):
        logits = run(sess, flat)
        window = softmax(logits)
        track = np.stack([tempered(w.mean(0, keepdims=True), model.temperature)[0] for w in np.split(window, ends)])
        outputs[name] = (tempered(window, model.temperature), track)
        print(f"scored {name}", file=sys.stderr, flush=True)
    results = {"cpu": str(int8_cpu()), "loadavg_start": os.getloadavg(), "clips": len(files),
               "calibration": {"files": len(calib_files), "windows": int(sum(map(len, calibration)))}, "variants": {}}
    fw, ft = outputs.get("float", (None, None))
    # timing: the same windows through each model in turn, several rounds (ratios within a round)
    timing = flat[: args.timing_windows]
    times = {name: [] for name in sessions}
    for name, sess in sessions.items():
        run(sess, timing[:8])  # warm up
    for _ in range(args.rounds):
        for name, sess in sessions.items():
            t0 = time.perf_counter()
            run(sess, timing)
            times[name].append((time.perf_counter() - t0) / len(timing) * 1000)
    f_ms = statistics.median(times["float"])
    for name in sessions:
        if name == "float":
            continue
        ratios = [a / b for a, b in zip(times["float"], times[name])]
        agreement = {}
        if name in outputs:
            qw, qt = outputs[name]
            same = np.argmax(qt, 1) == np.argmax(ft, 1)
            agreement = {"labels_equal": int(same.sum()), "labels_equal_share": round(float(same.mean()), 4),
                         "track_prob_max_diff": round(float(np.abs(qt - ft).max()), 4),
                         "track_prob_median_diff": round(float(np.median(np.abs(qt - ft).max(1))), 4),
                         "window_prob_max_diff": round(float(np.abs(qw - fw).max()), 4)}
        results["variants"][name] = {
            **agreement,
            "ms_per_window": round(statistics.median(times[name]), 2), "float_ms_per_window": round(f_ms, 2),
            "speedup": round(statistics.median(ratios), 3), "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
            **VARIANTS[name]}
        print(name, json.dumps(results["variants"][name]), flush=True)
    results["loadavg_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
