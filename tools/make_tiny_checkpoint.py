"""Write tests/data/tiny_tf_checkpoint/ and tests/data/tiny_tf_checkpoint_values.npz.

A tiny TensorFlow checkpoint (V2 format: model.ckpt.index + model.ckpt.data-00000-of-00001,
written by tf.compat.v1.train.Saver) for testing a TensorFlow-free checkpoint reader,
together with the exact values of its variables in an npz (key = variable name with
'/' replaced by '__'), so the test can compare without TensorFlow.

Variables: float32 conv kernel (2,3,1,4), float32 BN gamma (4,), float64 (3,),
int32 (2,2), scalar float32, and an Adam slot of the kernel (like the musicnn
checkpoints' ``<var>/Adam``). The Saver's ``checkpoint`` text file and the ``.meta``
graph are deleted: only the prefix files are kept.

Run with the TensorFlow venv described in tools/musicnn_reference.py::

    /tmp/tfenv/bin/python tools/make_tiny_checkpoint.py
"""

import argparse
import os

import numpy as np

VALUES = {
    "model/conv2d/kernel": (np.arange(24, dtype=np.float32).reshape(2, 3, 1, 4) - 11.5) / 8,
    "model/conv2d/kernel/Adam": np.arange(24, dtype=np.float32).reshape(2, 3, 1, 4) * np.float32(1e-3),
    "model/batch_normalization/gamma": np.array([1.0, 0.5, -0.25, 2.0], dtype=np.float32),
    "model/float64_var": np.array([np.pi, -np.e, 1e-300], dtype=np.float64),
    "model/int32_var": np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype=np.int32),
    "model/scalar": np.array(0.1, dtype=np.float32),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data"))
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(v, name=name) for name, v in VALUES.items()]
        for var, name in zip(variables, VALUES):
            assert var.op.name == name, (var.op.name, name)
        saver = tf.compat.v1.train.Saver(variables, write_version=tf.compat.v1.train.SaverDef.V2)
        ckpt_dir = os.path.join(args.out, "tiny_tf_checkpoint")
        os.makedirs(ckpt_dir, exist_ok=True)
        for f in os.listdir(ckpt_dir):
            os.remove(os.path.join(ckpt_dir, f))
        prefix = os.path.join(ckpt_dir, "model.ckpt")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False, write_state=False)

    for f in ("checkpoint", "model.ckpt.meta"):
        if os.path.exists(os.path.join(ckpt_dir, f)):
            os.remove(os.path.join(ckpt_dir, f))

    # read it back with TensorFlow's own reader
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    assert set(reader.get_variable_to_shape_map()) == set(VALUES)
    for name, value in VALUES.items():
        got = reader.get_tensor(name)
        assert got.dtype == value.dtype and got.shape == value.shape, (name, got.dtype, got.shape)
        assert np.array_equal(got, value), name

    np.savez(os.path.join(args.out, "tiny_tf_checkpoint_values.npz"),
             **{name.replace("/", "__"): value for name, value in VALUES.items()})
    for f in sorted(os.listdir(ckpt_dir)):
        print(f, os.path.getsize(os.path.join(ckpt_dir, f)))


if __name__ == "__main__":
    main()
