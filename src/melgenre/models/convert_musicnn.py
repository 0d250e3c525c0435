"""Convert the musicnn wheel's TensorFlow checkpoints to the safetensors files melgenre ships.

Run once, by a maintainer (nothing is downloaded at run time; TensorFlow is not needed)::

    pip download --no-deps musicnn==0.1.0 -d /tmp/musicnn
    python -m melgenre.models.convert_musicnn /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl

It reads ``musicnn/{MSD,MTT}_{musicnn,vgg}/`` from the wheel (or an unpacked folder), maps every
model variable to the PyTorch port's names and layouts (conv kernels ``[kh, kw, in, out]`` ->
``[out, in, kh, kw]``, dense ``[in, out]`` -> ``[out, in]``, BatchNorm gamma/beta/moving stats),
checks that the port takes every tensor, and writes ``melgenre/weights/<arch>_<msd|mtt>.safetensors``
plus the ISC licence notice ``MUSICNN_LICENSE.md``. Adam slots are left out.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from melgenre.models.tfcheckpoint import read_checkpoint

#: Checkpoint folder in the wheel -> (registry model, dataset tag).
CHECKPOINTS = {"MSD_musicnn": ("musicnn", "msd"), "MTT_musicnn": ("musicnn", "mtt"),
               "MSD_vgg": ("musicnn_vgg", "msd"), "MTT_vgg": ("musicnn_vgg", "mtt")}
ARCH = {"musicnn": "musicnn", "musicnn_vgg": "vgg"}
LICENSE_NAME = "MUSICNN_LICENSE.md"

_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _layer_names(model: str) -> dict[str, str]:
    """TF layer name -> PyTorch module name, in the TF graph's creation order."""
    if model == "musicnn":
        convs = [f"frontend.{i}.conv" for i in range(5)] + [f"midend.{i}.conv" for i in range(3)]
        bns = ["input_bn"] + [f"frontend.{i}.bn" for i in range(5)] + [f"midend.{i}.bn" for i in range(3)] \
            + ["pool_bn", "dense_bn"]
        names = {"dense": "dense", "dense_1": "tag_fc"}
        names.update({("conv2d" if i == 0 else f"conv2d_{i}"): c for i, c in enumerate(convs)})
    else:
        bns = ["input_bn"] + [f"bns.{i}" for i in range(5)]
        names = {f"{i + 1}CNN": f"convs.{i}" for i in range(5)}
        names["dense"] = "tag_fc"
    names.update({("batch_normalization" if i == 0 else f"batch_normalization_{i}"): b for i, b in enumerate(bns)})
    return names


def convert_variables(variables: dict[str, np.ndarray], model: str) -> dict[str, torch.Tensor]:
    """A TF musicnn checkpoint's variables as the PyTorch port's ``state_dict`` (tagger part).

    Raises ``ValueError`` when a variable has no place in the port or a shape does not fit.
    """
    from melgenre.models import build

    names = _layer_names(model)
    target = build(model, pretrained=None).state_dict()
    state: dict[str, torch.Tensor] = {}
    for tf_name, value in variables.items():
        layer, _, leaf = tf_name.rpartition("/")
        if layer not in names:
            raise ValueError(f"{tf_name}: no such layer in the {model} port")
        module = names[layer]
        if leaf in _BN:
            key = f"{module}.{_BN[leaf]}"
        elif leaf == "bias":
            key = f"{module}.bias"
        elif leaf == "kernel" and value.ndim == 2:  # dense [in, out]
            key, value = f"{module}.weight", value.T
        elif leaf == "kernel":  # conv [kh, kw, in, out]
            key, value = f"{module}.weight", value.transpose(3, 2, 0, 1)
            if target[key].ndim == 3:  # mid-end conv: [7, C, 1, 64] (C as width) is a 1-D conv over time
                value = value[:, 0].transpose(0, 2, 1)
        else:
            raise ValueError(f"{tf_name}: unexpected variable")
        if key not in target or tuple(target[key].shape) != value.shape:
            raise ValueError(f"{tf_name}: shape {value.shape} does not fit {key}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    missing = sorted(k for k in target if k not in state and not k.startswith("head.")
                     and not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(f"checkpoint lacks {', '.join(missing)}")
    return state


def _checkpoint_dir(source: Path, folder: str, tmp: Path) -> Path:
    """The checkpoint folder ``musicnn/<folder>/`` of a wheel (extracted into ``tmp``) or a tree."""
    if source.is_dir():
        candidates = [source / "musicnn" / folder, source / folder]
        found = next((c for c in candidates if (c / ".index").is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{source}: no musicnn/{folder}/.index")
        return found
    with zipfile.ZipFile(source) as wheel:
        for suffix in (".index", ".data-00000-of-00001"):
            wheel.extract(f"musicnn/{folder}/{suffix}", tmp)
    return tmp / "musicnn" / folder


def convert(source: str | Path, out_dir: str | Path) -> list[Path]:
    """Convert all four checkpoints of the musicnn wheel (or unpacked tree) into ``out_dir``."""
    from safetensors.torch import save_file

    source, out_dir = Path(source), Path(out_dir)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder, (model, dataset) in CHECKPOINTS.items():
            ckpt = _checkpoint_dir(source, folder, Path(tmp))
            digest = hashlib.sha256((ckpt / ".data-00000-of-00001").read_bytes()).hexdigest()
            state = convert_variables(read_checkpoint(f"{ckpt}/"), model)
            out = out_dir / f"{ARCH[model]}_{dataset}.safetensors"
            part = out.with_suffix(".tmp")
            save_file(state, str(part), metadata={
                "source": f"musicnn==0.1.0 wheel, musicnn/{folder}/ (Pons & Serra 2019, ISC licence)",
                "source_data_sha256": digest, "model": model, "tags": dataset})
            part.chmod(0o644)
            part.replace(out)
            written.append(out)
        if not source.is_dir():
            with zipfile.ZipFile(source) as wheel:
                notice = wheel.read("musicnn-0.1.0.dist-info/LICENSE.md").decode()
        else:
            notice = next(source.glob("musicnn-*.dist-info/LICENSE.md")).read_text()
    (out_dir / LICENSE_NAME).write_text(
        "The files musicnn_msd.safetensors, musicnn_mtt.safetensors, vgg_msd.safetensors and\n"
        "vgg_mtt.safetensors are the pretrained weights of musicnn 0.1.0 (Jordi Pons and Xavier Serra,\n"
        "\"musicnn: pre-trained convolutional neural networks for music audio tagging\", 2019),\n"
        "converted to PyTorch layout by melgenre.models.convert_musicnn. Their licence:\n\n" + notice)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m melgenre.models.convert_musicnn WHEEL_OR_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="musicnn-0.1.0-py3-none-any.whl or its unpacked folder")
    default_out = Path(__file__).resolve().parent.parent / "weights"
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default: {default_out})")
    args = parser.parse_args(argv)
    for path in convert(args.source, args.out):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
