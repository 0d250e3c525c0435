"""Scale-out with Ray: ``prepare`` and batch ``predict`` on a Ray cluster (or a local Ray instance).

Both give exactly what the local commands give:

* :func:`prepare_ray` runs :func:`melgenre.store._compute_track` (the function the local
  process pool runs) as Ray tasks, one per track, at most ``2 × cluster CPUs`` in flight. Each
  task returns its part file's bytes; the driver writes them to ``<out>.parts/`` exactly as the
  local pipeline does, then the same :func:`melgenre.store._assemble` writes the HDF5 file. So
  the output is byte-for-byte the same data as ``melgenre prepare``, the run is resumable in the
  same way (finished parts are reused), and a local run can resume a Ray run and vice versa.
* :func:`predict_ray` starts one actor per CPU (at most one per file), each loading the model
  once, maps the files over them in order and returns the same ``(path, prediction, error)``
  triples as :func:`melgenre.inference.predict_paths`, so the CSV/JSON/table output is the same.

What a cluster needs: melgenre installed (same version) on every node, and the audio files (and
for ``predict`` the model file) readable at the same absolute path on every node, e.g. on a
shared file system. The HDF5 file and its parts are written by the driver only.

``address``: ``None`` or ``""`` attaches to the cluster in ``RAY_ADDRESS`` or starts a local Ray
instance (``ray.init()``); anything else is passed to ``ray.init(address=...)``, e.g. ``"auto"``
(a cluster started on this node with ``ray start --head``) or ``"ray://head:10001"`` (Ray Client).
If Ray is already initialised in this process it is used as it is.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from melgenre.errors import MelgenreError

log = logging.getLogger(__name__)

INSTALL_HINT = "Ray is not installed: pip install 'melgenre[ray]' (or pip install 'ray[data]')"


def _ray():
    try:
        import ray
    except ImportError:
        raise MelgenreError(INSTALL_HINT) from None
    return ray


def ray_available() -> bool:
    """True when Ray can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def ray_session(address: str | None = None, **init_kwargs: Any) -> Iterator[Any]:
    """Use the running Ray, or connect/start one for the duration of the block (then shut it down).

    Parameters
    ----------
    address : str, optional
        ``None``/``""``: ``ray.init()`` (``RAY_ADDRESS`` or a new local instance); else the
        address for ``ray.init(address=...)``.
    **init_kwargs
        More ``ray.init`` arguments (e.g. ``num_cpus`` for a local instance).

    Yields
    ------
    module
        The ``ray`` module.
    """
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False, **init_kwargs}
    try:
        if address:
            kwargs.pop("include_dashboard")  # only for a new local instance
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError, ValueError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MelgenreError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {reason}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# -- prepare -------------------------------------------------------------------------------------

def _compute_part(job, compute=None) -> bytes:
    """Ray task: ``compute(job)`` (default :func:`melgenre.store._compute_track`) into a worker-local
    temp part, returned as bytes."""
    import dataclasses

    from melgenre import store

    compute = compute or store._compute_track
    with tempfile.TemporaryDirectory(prefix="melgenre-part-") as tmp:
        part = Path(tmp) / Path(job.part).name
        compute(dataclasses.replace(job, part=str(part)))
        return part.read_bytes()


def run_part_tasks(todo: list, total: int, description: str, address: str | None = None, progress: bool = True,
                   max_in_flight: int | None = None, compute=None) -> None:
    """Run part jobs (dataclasses with a ``part`` path) as Ray tasks; the driver writes each part file.

    ``compute(job)`` (default :func:`melgenre.store._compute_track`) runs on the cluster and writes
    ``job.part``; its bytes come back and are written to ``job.part`` here atomically, so parts
    look exactly as the local process pool leaves them and a run resumes from either.
    At most ``max_in_flight`` (default ``2 ×`` the cluster's CPUs) tasks are submitted at once.
    """
    from melgenre import store
    from melgenre.utils import atomic_path

    with ray_session(address) as ray:
        task = ray.remote(num_cpus=1, max_retries=2)(_compute_part)
        limit = max_in_flight or 2 * _cluster_cpus(ray)
        pending = iter(todo)
        with store._progress(progress) as bar:
            bar_task = bar.add_task(description, total=total, completed=total - len(todo), rate="")
            started, done = time.perf_counter(), 0
            in_flight = {task.remote(j, compute): j for j in store._take(pending, limit)}
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    job = in_flight.pop(ref)
                    try:
                        payload = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                        raise MelgenreError(f"{job.path}: a Ray task failed: {reason}") from None
                    with atomic_path(Path(job.part)) as tmp:
                        tmp.write_bytes(payload)
                    done += 1
                    bar.advance(bar_task)
                    bar.update(bar_task, rate=f"{done / (time.perf_counter() - started):.1f} tracks/s")
                in_flight |= {task.remote(j, compute): j for j in store._take(pending, len(ready))}


def prepare_ray(data, preset, out: str | Path, address: str | None = None, overwrite: bool = False,
                progress: bool = True, max_in_flight: int | None = None, compression: str = "none",
                augment: tuple[str, ...] = ()):
    """:func:`melgenre.store.prepare` with the tracks computed by Ray tasks (same output, resumable).

    Parameters
    ----------
    data : path or Corpus
        A corpus folder or a discovered corpus; its files must be readable from every Ray node
        at the same absolute path.
    preset : name, YAML path or Preset
        Feature preset.
    out : path
        The ``.h5`` file to write (by this process only).
    address : str, optional
        Ray address (see the module docstring); ignored when Ray is already initialised.
    overwrite : bool
        Replace an existing ``out`` made from other inputs.
    progress : bool
        Show a progress bar.
    max_in_flight : int, optional
        Tasks submitted at once (default ``2 ×`` the cluster's CPUs): bounds the driver's memory.
    compression : {"none", "gzip"}
        Compression of the images (see :func:`melgenre.store.prepare`); gzip is done by the tasks.
    augment : tuple of str
        Audio variants stored as extra training rows (see :func:`melgenre.store.prepare`).

    Returns
    -------
    melgenre.store.PrepareReport
    """
    from melgenre import store

    t0 = time.perf_counter()
    prep = store.start_prepare(data, preset, out, overwrite, t0, compression, augment=augment)
    if isinstance(prep, store.PrepareReport):
        return prep
    run_part_tasks(prep.todo, len(prep.jobs), f"prepare {prep.preset.name} (ray)", address, progress, max_in_flight)
    return store.finish_prepare(prep, t0)


# -- predict -------------------------------------------------------------------------------------

class _Predictor:
    """Ray actor body: one model and its :class:`melgenre.pipeline.Predictor` per worker process, one file per call."""

    def __init__(self, model: str | None, backend: str | None, hop: float | None = None,
                 windows: int | str | None = None):
        from melgenre.inference import load_model
        from melgenre.pipeline import Predictor

        self.predictor = Predictor(load_model(model, backend=backend, hop=hop, windows=windows))

    def predict(self, path: str, name: str, top_k: int) -> tuple[Any, str | None]:
        """``(prediction, None)`` or ``(None, reason)``, exactly as :func:`melgenre.inference.predict_paths`."""
        item = self.predictor.decode(path, name=name)
        [(item, pred)] = list(self.predictor.run([item], top_k))
        return pred, item.error


def predict_ray(paths: Iterable[str | Path], model: str | Path | None = None, backend: str | None = None,
                top_k: int = 3, address: str | None = None, actors: int | None = None,
                threads: int | None = None, hop: float | None = None,
                windows: int | str | None = None) -> Iterator[tuple[Path, Any, str | None]]:
    """:func:`melgenre.inference.predict_paths` on Ray actors (one model per actor), in input order.

    Parameters
    ----------
    paths : iterable of path
        Files and directories (expanded with :func:`melgenre.audio.expand_paths`).
    model : path, optional
        Model for :func:`melgenre.inference.load_model` (default: the installed default model);
        it must be readable at the same absolute path on every node.
    backend : {"torch", "onnx"}, optional
        Inference backend.
    top_k : int
        Classes per ``Prediction.top``.
    address : str, optional
        Ray address (see the module docstring).
    actors : int, optional
        Actors to start (default: the cluster's CPUs, at most one per file).
    threads : int, optional
        Torch/ONNX threads per actor (default: Ray's, 1 per actor CPU).
    hop : float, optional
        Seconds between prediction windows (see :func:`melgenre.inference.load_model`).
    windows : int or "all", optional
        The most windows a prediction scores (see :func:`melgenre.inference.load_model`).

    Yields
    ------
    tuple
        ``(path, prediction, None)`` or ``(path, None, reason)``, in the order of the files.
    """
    from melgenre.audio import expand_paths

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    files = expand_paths(paths)
    if not files:
        return
    # a path is made absolute for the actors; a shipped model's name (melcnn) is passed as it is
    model_arg = str(Path(model).resolve()) if model is not None and Path(model).exists() else model
    with ray_session(address) as ray:
        from ray.util import ActorPool

        env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}} if threads else None
        actor_cls = ray.remote(num_cpus=1, **({"runtime_env": env} if env else {}))(_Predictor)
        n = min(len(files), actors or _cluster_cpus(ray))
        pool = ActorPool([actor_cls.remote(model_arg, backend, hop, windows) for _ in range(n)])
        results = pool.map(lambda actor, f: actor.predict.remote(str(f.resolve()), str(f), top_k), files)
        try:
            for path, (pred, error) in zip(files, results):
                yield path, pred, error
        except ray.exceptions.RayError as exc:  # an actor died, e.g. the model failed to load on a node
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise MelgenreError(f"a Ray prediction actor failed: {reason}") from None


__all__ = ["INSTALL_HINT", "predict_ray", "prepare_ray", "ray_available", "ray_session", "run_part_tasks"]
