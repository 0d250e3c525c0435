"""Saliency ("why this genre"): where on the mel image the evidence for a genre lies.

Two methods, both giving a non-negative map of the image's shape:

* **Grad-CAM** (Selvaraju et al. 2017, :func:`gradcam`): the feature maps ``A_k`` of a late conv
  stage, weighted by the mean gradient of the genre's logit over each map, summed, ReLU, and
  upsampled (bilinear) to the image. Needs the torch module. The stage per model
  (:func:`cam_targets`):

  - ``melcnn``, ``vanilla_cnn``, ``yolov8_cls`` and any other model: the last module whose output is
    still a 4-D map before pooling (melcnn's last residual block, vanilla's last ReLU, YOLOv8's SPPF
    or the ultralytics head's conv), found by running the model once;
  - ``yolov4_cls``: the three fused PANet maps (strides 8, 16, 32) that its head pools, each map
    normalised and the three averaged;
  - ``musicnn_vgg``: its fifth conv-ReLU-BN block, before the last max-pool;
  - ``musicnn`` (the shipped default model): its front end, the only stage that still sees
    frequency (each branch is max-pooled over all mel bins; the mid end is 1-D over time). The five
    branches (timbral 7 x 38 and 7 x 67 mel bins, temporal 128/64/32 frames x 1 bin) are one stage
    (their channels are concatenated). Because of the max over mel bins only the winning bin of
    each channel and frame gets a gradient, so a channel-mean weight would smear every channel over
    all bins: here the map is the element-wise gradient x activation of each branch's conv-ReLU
    output (HiResCAM, Draelos & Carin 2020; the change of the logit, to first order, from switching
    the unit off), spread evenly over each unit's receptive field.

* **Occlusion** (Zeiler & Fergus 2014, :func:`occlusion`): a patch of the image is replaced by the
  image's mean, and the drop in the genre's probability (clipped at 0) is spread over the patch;
  patches slide with half-patch steps and overlapping drops are averaged. Model-agnostic (any
  ``predict`` function, ONNX too), and a check on Grad-CAM; one forward pass per patch position.

:func:`explain` runs either on the first ``preset.duration`` seconds of a clip (what ``melgenre
show`` and the web page draw), window by window, and assembles one map aligned with the clip's mel
image, scaled to [0, 1] by its maximum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melgenre import audio, features
from melgenre.errors import MelgenreError
from melgenre.utils import save_png

#: Saliency methods of :func:`explain`.
METHODS = ("gradcam", "occlusion")

_NOT_A_STAGE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d,
                nn.Identity)


@dataclass
class CamTarget:
    """A module whose 4-D output Grad-CAM reads.

    ``time_major``: the map is ``(B, C, time, freq)`` (musicnn's layout), not ``(B, C, freq, time)``.
    ``pooled``: a musicnn front-end branch (conv -> ReLU -> BN -> max over frequency); the hook
    rebuilds its ReLU map, returns the pooled form (the model's output is unchanged), and the map is
    read as gradient x activation spread over the receptive fields (see the module docstring).
    """

    module: nn.Module
    time_major: bool = False
    pooled: bool = False


def cam_targets(module: nn.Module, image_shape: tuple[int, int] | None = None) -> list[CamTarget]:
    """The conv stage(s) Grad-CAM uses for ``module`` (see the module docstring).

    ``image_shape`` ``(H, W)`` is needed only for the generic search (it runs the model once on zeros).
    """
    from melgenre.models.musicnn import MusiCNN, MusiCNNVGG
    from melgenre.models.yolov4 import YOLOv4Classifier

    if isinstance(module, MusiCNN):
        return [CamTarget(block, time_major=True, pooled=True) for block in module.frontend]
    if isinstance(module, MusiCNNVGG):
        return [CamTarget(module.bns[-1], time_major=True)]
    if isinstance(module, YOLOv4Classifier):
        return [CamTarget(m) for m in (module.neck.td3, module.neck.bu4, module.neck.bu5)]
    return [CamTarget(_last_map_module(module, image_shape))]


def _last_map_module(module: nn.Module, image_shape: tuple[int, int] | None) -> nn.Module:
    """The last module (in the order forward passes finish) whose output is a 4-D map with more than
    one position and is not the output of a pooling/dropout layer."""
    if image_shape is None:
        raise ValueError("image_shape is needed to find a model's last conv stage")
    finished: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, _i, out: finished.append((m, out))) for m in module.modules()
               if m is not module]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 1, *image_shape))
    finally:
        for h in handles:
            h.remove()
    pooled_outputs = {id(out) for m, out in finished if isinstance(m, _NOT_A_STAGE)}
    for m, out in reversed(finished):
        if (isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1
                and not isinstance(m, _NOT_A_STAGE) and id(out) not in pooled_outputs):
            return m
    raise MelgenreError(f"{type(module).__name__}: no 4-D conv feature map found for Grad-CAM")


def _hook(target: CamTarget, maps: list[torch.Tensor]) -> Callable:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if not target.pooled:
            maps.append(output)
            return None
        # musicnn's FreqPooledConv in eval mode pools a fused conv without materialising its map;
        # BN(ReLU(conv)) (eval statistics) max-pooled over frequency is the same output.
        act = torch.relu(module.conv(F.pad(inputs[0], (0, 0, *module.time_pad))))  # (B, C, T, F')
        maps.append(act)
        return module.bn(act).amax(3)
    return hook


def _receptive_spread(cam: torch.Tensor, block: nn.Module) -> torch.Tensor:
    """A musicnn branch's ``(B, T, F')`` map spread evenly over each unit's receptive field: ``(B, T, F)``."""
    kt, kf = block.conv.kernel_size
    before = block.time_pad[0]
    box = torch.full((1, 1, kt, kf), 1.0 / (kt * kf))
    full = F.conv_transpose2d(cam[:, None], box)[:, 0]  # (B, T + pads, F' + kf - 1)
    frames = cam.shape[1] + kt - 1 - sum(block.time_pad)  # the input's length
    return full[:, before:before + frames]


def gradcam(module: nn.Module, images: np.ndarray, class_index: int, batch: int = 8) -> np.ndarray:
    """Grad-CAM maps of mel images for one class.

    Parameters
    ----------
    module : torch.nn.Module
        A registry model (logits out), in eval mode.
    images : np.ndarray
        ``(N, H, W)`` float32 images of the model's preset.
    class_index : int
        The class whose logit is explained.
    batch : int
        Images per forward/backward pass (musicnn keeps about 50 MB of maps and gradients per image).

    Returns
    -------
    np.ndarray
        ``(N, H, W)`` float32, >= 0, unnormalised (each of several target stages is scaled to a
        maximum of 1 over the batch before they are averaged).
    """
    images = np.asarray(images, dtype=np.float32)
    targets = cam_targets(module, images.shape[1:])
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])[:, None]).requires_grad_(True)
        maps: list[torch.Tensor] = []
        handles = [t.module.register_forward_hook(_hook(t, maps)) for t in targets]
        try:
            with torch.enable_grad():
                logits = module(x)
                grads = torch.autograd.grad(logits[:, class_index].sum(), maps)
        finally:
            for h in handles:
                h.remove()
        cams = []
        for target, a, g in zip(targets, maps, grads):
            if target.pooled:
                cam = _receptive_spread(torch.relu((g * a).sum(1)).detach(), target.module)  # (B, T, F)
            else:
                cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach()  # (B, h, w)
            if target.time_major:
                cam = cam.transpose(1, 2)
            cams.append(F.interpolate(cam[:, None], size=images.shape[1:], mode="bilinear", align_corners=False)[:, 0])
        out.append(cams)
    per_target = [torch.cat([b[k] for b in out]).clamp_min(0) for k in range(len(targets))]
    if len(per_target) == 1 or all(t.pooled for t in targets):  # one stage (musicnn's branches: one stage)
        total = sum(per_target)
    else:
        total = sum(m / m.max().clamp_min(1e-12) for m in per_target) / len(per_target)
    return total.numpy().astype(np.float32)


def occlusion(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, class_index: int,
              patch: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
              on_image: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Occlusion maps: the drop in one class's probability when a patch is covered.

    Parameters
    ----------
    predict : callable
        ``(N, H, W)`` images -> ``(N, C)`` probabilities (e.g. ``GenreModel.predict_images``).
    images : np.ndarray
        ``(N, H, W)`` float32 images.
    class_index : int
        The class explained.
    patch : (int, int), optional
        Patch height and width in pixels. Default: a sixth of the height, a quarter of the width
        (musicnn's 96 x 187 patches: 16 x 46, 11 x 7 positions).
    stride : (int, int), optional
        Steps between patches. Default: half the patch; the last patch always touches the edges.
    on_image : callable, optional
        Called as ``on_image(done, total)`` after each image (e.g. to advance a progress bar).

    Returns
    -------
    np.ndarray
        ``(N, H, W)`` float32: at each pixel, the mean over the patches covering it of
        ``max(p - p_occluded, 0)``.
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    ph, pw = patch or (max(1, h // 6), max(1, w // 4))
    sh, sw = stride or (max(1, ph // 2), max(1, pw // 2))
    rows = sorted(set(range(0, max(h - ph, 0) + 1, sh)) | {max(h - ph, 0)})
    cols = sorted(set(range(0, max(w - pw, 0) + 1, sw)) | {max(w - pw, 0)})
    out = np.zeros_like(images)
    cover = np.zeros((h, w), dtype=np.float32)
    for r in rows:
        for c in cols:
            cover[r:r + ph, c:c + pw] += 1
    for i, image in enumerate(images):
        base = float(predict(image[None])[0, class_index])
        variants = np.repeat(image[None], len(rows) * len(cols), axis=0)
        for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
            variants[k, r:r + ph, c:c + pw] = image.mean()
        drops = np.maximum(base - predict(variants)[:, class_index], 0.0)
        for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
            out[i, r:r + ph, c:c + pw] += drops[k]
        if on_image is not None:
            on_image(i + 1, n)
    return out / cover


@dataclass
class TagEvidence:
    """Why a tag-prior model (the shipped default) chose a genre, in words it can give: its
    logits are the genre head's plus the tagger's own genre-tag logits (``tag_prior``)."""

    genre: str  # the genre explained
    runner_up: str  # the next most likely genre
    head_margin: float  # mean over windows of the head's logit for genre minus runner_up
    tag_margin: float  # the same for the tag prior's logits
    tags: list[tuple[str, float]]  # the clip's most likely tags, mean probability over windows
    genre_tags: list[tuple[str, float]]  # the tags the prior maps to genre (empty: it has none of its own)

    def describe(self) -> str:
        """One line: where the margin over the runner-up comes from, and which tags were heard."""
        own = (", ".join(f"{t} {p:.2f}" for t, p in self.genre_tags) if self.genre_tags
               else f"{self.genre} has no tag of its own")
        return (f"evidence for {self.genre} against {self.runner_up} (logit margins, mean over windows): genre head "
                f"{self.head_margin:+.2f}, the tagger's genre tags {self.tag_margin:+.2f}; {self.genre}'s tags: {own}; "
                "tags heard: " + ", ".join(f"{t} {p:.2f}" for t, p in self.tags))


def tag_evidence(model, images: np.ndarray, genre: str, top: int = 5) -> TagEvidence | None:
    """:class:`TagEvidence` of ``genre`` on a model's mel windows ``(N, H, W)``.

    None where it cannot say: an ONNX model (no torch module) or one without a ``tag_prior`` (then
    only the saliency map explains it).
    """
    module = model._module
    if module is None or not getattr(module, "tag_prior", False):
        return None
    c = model.classes.index(genre)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            emb = module.head_input(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None])
            head, prior = module.head(emb).mean(0).numpy(), module.prior_logits(emb).mean(0).numpy()
            tags = torch.sigmoid(module.tag_logits(emb)).mean(0).numpy()
    finally:
        module.train(was_training)
    order = np.argsort(-(head + prior))
    runner = int(order[1] if order[0] == c else order[0])
    own = ((model.card or {}).get("model", {}).get("tag_prior") or {}).get("genres", {}).get(genre) or []
    prob = dict(zip(module.tags, tags.tolist()))
    return TagEvidence(genre=genre, runner_up=model.classes[runner], head_margin=float(head[c] - head[runner]),
                       tag_margin=float(prior[c] - prior[runner]),
                       tags=[(module.tags[i], float(tags[i])) for i in np.argsort(-tags)[:top]],
                       genre_tags=sorted(((t, prob[t]) for t in own), key=lambda tp: -tp[1]))


@dataclass(eq=False)
class Explanation:
    """Saliency of one genre over the first ``preset.duration`` seconds of a clip."""

    source: str  # file path, or the name given
    genre: str  # the genre explained
    method: str  # "gradcam" or "occlusion"
    image: np.ndarray  # (H, W) the clip's mel image (chunked presets: the whole stretch at natural size)
    saliency: np.ndarray  # (H, W) in [0, 1], aligned with image
    seconds: float  # audio covered by the image's columns
    window_starts: list[float]  # start of each explained window in seconds
    window_probabilities: list[float]  # the genre's probability in each window
    model_id: str
    evidence: TagEvidence | None = None  # the genre's evidence in words (tag-prior models, torch backend)


def explain(model, y: np.ndarray, genre: str | None = None, method: str = "gradcam",
            source: str = "<array>", on_window: Callable[[int, int], None] | None = None,
            predict: Callable[[np.ndarray], np.ndarray] | None = None) -> Explanation:
    """Saliency of ``genre`` on a clip, window by window, assembled over its mel image.

    Parameters
    ----------
    model : GenreModel
        The classifier (Grad-CAM needs the torch backend; occlusion runs on any).
    y : np.ndarray
        Mono samples at ``model.preset.sr``; the first ``preset.duration`` seconds are explained
        (chunked presets: every chunk of them, with the preset's own chunk hop).
    genre : str, optional
        Default: the most probable genre over the explained windows.
    method : {"gradcam", "occlusion"}
    source : str
        Name for the result and messages.
    on_window : callable, optional
        Occlusion only (one forward pass per patch position, the slow method): called as
        ``on_window(done, total)`` after each window.
    predict : callable, optional
        Occlusion only: the ``(N, H, W)`` -> ``(N, C)`` probabilities to occlude, e.g. the same model
        on ONNX Runtime (faster). Default: ``model.predict_images``.

    Returns
    -------
    Explanation
    """
    from melgenre.display import unchunked
    from melgenre.inference import tempered
    from melgenre.windows import window_images

    preset = model.preset
    if method not in METHODS:
        raise MelgenreError(f"unknown saliency method {method!r}; use one of {', '.join(METHODS)}")
    if method == "gradcam" and model._module is None:
        raise MelgenreError(f"{source}: Grad-CAM needs the torch backend (use --method occlusion with ONNX)")
    y = features.fit_to_preset(y, preset)
    images, starts, _ = window_images(y, preset)
    raw = model.window_outputs(images)[0]
    probs = tempered(raw, model.temperature)
    if genre is None:  # the label the model predicts for these windows (the temperature keeps its order)
        genre = model.classes[int(raw.mean(0).argmax())]
    if genre not in model.classes:
        raise MelgenreError(f"unknown genre {genre!r}; the model knows {', '.join(model.classes)}")
    c = model.classes.index(genre)
    maps = (gradcam(model._module, images, c) if method == "gradcam"
            else occlusion(predict or model.predict_images, images, c, on_image=on_window))
    if preset.chunk_seconds is None:
        image, saliency = images[0], maps[0]
    else:
        image = features.mel_images(y, unchunked(preset))[0]
        total = np.zeros_like(image)
        count = np.zeros(image.shape[1], dtype=np.float32)
        width = images.shape[2]
        for start, m in zip(starts, maps):
            col = int(round(start * preset.sr / preset.hop_length))
            part = min(width, image.shape[1] - col)
            total[:, col:col + part] += m[:, :part]
            count[col:col + part] += 1
        saliency = total / np.maximum(count, 1)
    peak = float(saliency.max())
    return Explanation(source=source, genre=genre, method=method, image=image.astype(np.float32),
                       saliency=(saliency / peak if peak > 0 else saliency).astype(np.float32),
                       seconds=len(y) / preset.sr, window_starts=[float(s) for s in starts],
                       window_probabilities=[float(p) for p in probs[:, c]], model_id=model.model_id,
                       evidence=tag_evidence(model, images, genre))


def explain_file(model, path: str | Path, genre: str | None = None, method: str = "gradcam",
                 **options) -> tuple[Explanation, np.ndarray]:
    """:func:`explain` of an audio file (``options``: its ``on_window`` and ``predict``); returns the
    explanation and the decoded samples."""
    y = audio.load(path, sr=model.preset.sr).samples
    return explain(model, y, genre, method, source=str(path), **options), y


def saliency_figure(y: np.ndarray, preset, expl: Explanation, title: str = ""):
    """The clip's mel figure (:func:`melgenre.display.mel_figure`, same layout as the web page's
    spectrogram) with the saliency overlaid in cyan, opaque where it is high."""
    import librosa
    from matplotlib.colors import ListedColormap

    from melgenre.display import mel_figure

    method = {"gradcam": "Grad-CAM", "occlusion": "occlusion"}[expl.method]
    fig = mel_figure(y, preset, title or f"{Path(expl.source).name}: evidence for {expl.genre} ({method})")
    ax = fig.axes[0]
    rows, cols = expl.saliency.shape
    fmax = preset.fmax or preset.sr / 2
    colours = np.zeros((256, 4))
    colours[:, 1:3] = 1.0
    colours[:, 3] = np.linspace(0, 0.85, 256)
    # colour scale to the 99th percentile: a few hot pixels would otherwise wash out the rest
    top = float(np.percentile(expl.saliency, 99)) or 1.0
    ax.pcolormesh(np.linspace(0, expl.seconds, cols + 1),
                  librosa.mel_frequencies(rows + 1, fmin=preset.fmin, fmax=fmax),
                  expl.saliency, cmap=ListedColormap(colours), vmin=0, vmax=top, shading="flat")
    return fig


def save_saliency_figure(y: np.ndarray, preset, expl: Explanation, out: str | Path) -> Path:
    """Write :func:`saliency_figure` as a PNG to ``out`` (atomically); returns ``out``."""
    return save_png(saliency_figure(y, preset, expl), out)
