"""Write tests/data/musicnn_reference.npz: outputs of the ORIGINAL TensorFlow musicnn models.

The PyTorch port of the pretrained musicnn taggers (Pons & Serra 2019) is tested in CI,
where TensorFlow is not installed, against the reference values this script produces
with the original TF-1 graph (musicnn 0.1.0, models.py) and the original checkpoints.

What it stores (clip index K = 0, 1, 2; one GTZAN clip per genre, blues/classical/rock):

- ``clipK_id``: track id, e.g. "blues/blues.00000" (the audio itself is NOT stored);
- ``clipK_input``: the first 3 input patches of the clip, float32 (3, 187, 96), exactly
  as fed to the model. NB: the original ``log10(10000 * mel16 + 1)`` with mel16 float16
  is computed in FLOAT32 under NumPy 1.x value-based casting (10000 -> uint16, and
  float16 x uint16 -> float32); under NumPy 2 (NEP 50) it would stay float16 and
  overflow to inf (10000 * mel exceeds 65504). So the model input is
  ``log10(10000 * mel.astype(float16).astype(float32) + 1)`` in float32; the float16
  mel can be recovered exactly from it (checked below);
- for each model M in MSD_musicnn, MTT_musicnn, MSD_vgg, MTT_vgg, computed on those
  3 patches as one batch: ``clipK_M_taggram`` (3, 50) = sigmoid(logits) and
  ``clipK_M_logits`` (3, 50); musicnn models also ``clipK_M_mean_pool``,
  ``clipK_M_max_pool`` (3, 753) and ``clipK_M_penultimate`` (3, 200); vgg models also
  ``clipK_M_pool5`` (3, 2, 1, 128);
- end-to-end from the audio file with the original pipeline: ``clipK_n_patches``
  and, for MSD_musicnn over ALL patches of the 30-s clip, ``clipK_MSD_musicnn_clip_taggram``
  (n_patches, 50) and its mean ``clipK_MSD_musicnn_clip_taggram_mean`` (50,);
- ``tags_MSD``, ``tags_MTT`` (configuration.py) and ``versions`` (tensorflow, librosa,
  numpy, ... used).

Deliberately NOT musicnn's ``extractor.extractor()``: with its BATCH_SIZE = 1 loop it
returns patch 1's ``penultimate`` (and cnn1..3) for every later patch. The graph is
built here as extractor.py builds it, and all patches of a clip go in as one batch.

How to run (TensorFlow lives in its own venv; musicnn itself is not pip-installed,
its numpy pin cannot install)::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install "tensorflow-cpu==2.15.*" "librosa==0.10.2.post1" soundfile
    mkdir -p /tmp/musicnn && cd /tmp/musicnn
    /tmp/tfenv/bin/pip download --no-deps musicnn==0.1.0
    unzip -q -d wheel musicnn-0.1.0-py3-none-any.whl
    cd /work/main
    /tmp/tfenv/bin/python tools/musicnn_reference.py \
        --musicnn /tmp/musicnn/wheel --gtzan ../shared/data/gtzan-dev

The checkpoints' ``checkpoint`` text files point at the author's paths, so they are
restored by prefix: ``<wheel>/musicnn/<model>/`` (the files are named ``.index`` etc.).
"""

import argparse
import os
import platform
import sys

import numpy as np

CLIPS = ("blues/blues.00000", "classical/classical.00001", "rock/rock.00002")
MODELS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
N_KEEP = 3  # patches per clip kept in the npz

SR = 16000
FFT_HOP = 256
FFT_SIZE = 512
N_MELS = 96
N_FRAMES = 187  # librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1


def log_mel(path):
    """The original extractor.batch_data spectrogram: (T, 96), float32 under NumPy 1.x."""
    import librosa

    audio, sr = librosa.load(path, sr=SR)
    mel = librosa.feature.melspectrogram(
        y=audio, sr=sr, hop_length=FFT_HOP, n_fft=FFT_SIZE, n_mels=N_MELS
    ).T
    mel = mel.astype(np.float16)
    return np.log10(10000 * mel + 1)  # float32 result under NumPy 1.x (value-based casting)


def patches(spec, n_frames=N_FRAMES):
    """Non-overlapping patches starting at 0, n, 2n, ... while start <= T - n."""
    starts = range(0, spec.shape[0] - n_frames + 1, n_frames)
    return np.stack([spec[s:s + n_frames] for s in starts])


def run_model(tf, models, model, batches):
    """Run one model on a list of (B, 187, 96) batches; returns a list of dicts."""
    num_classes = 50
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        if "vgg" in model:
            y, _p1, _p2, _p3, _p4, pool5 = models.define_model(x, is_training, model, num_classes)
            fetch = {"logits": y, "pool5": pool5}
        else:
            (y, _timbral, _temporal, _cnn1, _cnn2, _cnn3,
             mean_pool, max_pool, penultimate) = models.define_model(x, is_training, model, num_classes)
            fetch = {"logits": y, "mean_pool": mean_pool, "max_pool": max_pool,
                     "penultimate": penultimate}
        fetch["taggram"] = tf.nn.sigmoid(y)

    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
    with tf.compat.v1.Session(config=config) as sess:
        saver = tf.compat.v1.train.Saver()
        saver.restore(sess, os.path.join(models.__file__.rsplit(os.sep, 1)[0], model) + "/")
        out = []
        for batch in batches:
            res = sess.run(fetch, feed_dict={x: batch, is_training: False})
            out.append({k: np.asarray(v, dtype=np.float32) for k, v in res.items()})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--musicnn", default="/tmp/musicnn/wheel",
                    help="folder holding the unzipped musicnn/ package (with checkpoints)")
    ap.add_argument("--gtzan", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                    "data", "gtzan-dev"),
                    help="GTZAN root with <genre>/<genre>.NNNNN.flac")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                  "musicnn_reference.npz"))
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, args.musicnn)
    import librosa
    import scipy
    import soundfile
    import soxr
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    assert int(np.__version__.split(".")[0]) < 2, "the original preprocessing needs NumPy 1.x casting"
    from musicnn import configuration, models

    assert configuration.SR == SR and configuration.FFT_HOP == FFT_HOP
    assert configuration.FFT_SIZE == FFT_SIZE and configuration.N_MELS == N_MELS
    assert librosa.time_to_frames(3, sr=SR, n_fft=FFT_SIZE, hop_length=FFT_HOP) + 1 == N_FRAMES

    data = {
        "tags_MSD": np.array(configuration.MSD_LABELS),
        "tags_MTT": np.array(configuration.MTT_LABELS),
        "versions": np.array(
            f"tensorflow {tf.__version__}; librosa {librosa.__version__}; numpy {np.__version__}; "
            f"scipy {scipy.__version__}; soxr {soxr.__version__}; soundfile {soundfile.__version__}; "
            f"python {platform.python_version()}; musicnn 0.1.0; "
            f"librosa.load(sr=16000) default res_type (soxr_hq)"
        ),
    }
    full = []
    for k, clip in enumerate(CLIPS):
        batch = patches(log_mel(os.path.join(args.gtzan, clip + ".flac")))
        assert batch.dtype == np.float32 and batch.shape[1:] == (N_FRAMES, N_MELS), batch.dtype
        mel16 = ((10.0 ** batch.astype(np.float64) - 1) / 10000).astype(np.float16)
        assert np.array_equal(np.log10(10000 * mel16 + 1), batch), "float16 mel not recoverable"
        full.append(batch)
        data[f"clip{k}_id"] = np.array(clip)
        data[f"clip{k}_input"] = batch[:N_KEEP].copy()
        data[f"clip{k}_n_patches"] = np.array(batch.shape[0], dtype=np.int64)
        print(f"{clip}: {batch.shape[0]} patches", flush=True)

    for model in MODELS:
        small = [b[:N_KEEP] for b in full]
        extra = full if model == "MSD_musicnn" else []
        outs = run_model(tf, models, model, small + extra)
        for k in range(len(CLIPS)):
            for name, value in outs[k].items():
                data[f"clip{k}_{model}_{name}"] = value
        if extra:
            for k in range(len(CLIPS)):
                tg = outs[len(CLIPS) + k]["taggram"]
                data[f"clip{k}_{model}_clip_taggram"] = tg
                data[f"clip{k}_{model}_clip_taggram_mean"] = tg.mean(axis=0)
                diff = np.abs(tg[:N_KEEP] - outs[k]["taggram"]).max()
                print(f"  {model} clip{k}: full-batch vs 3-patch-batch max |dtaggram| = {diff:.3g}")
        for k in range(len(CLIPS)):
            tags = configuration.MSD_LABELS if model.startswith("MSD") else configuration.MTT_LABELS
            top = np.argsort(-data[f"clip{k}_{model}_taggram"].mean(axis=0))[:3]
            print(f"  {model} {CLIPS[k]}: top tags {[tags[i] for i in top]}", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(data)} arrays)")


if __name__ == "__main__":
    main()
