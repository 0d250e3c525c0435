"""``musicnn`` and ``musicnn_vgg``: PyTorch ports of Pons & Serra's pretrained music taggers.

musicnn (Pons & Serra 2019, "musicnn: pre-trained convolutional neural networks for music audio
tagging"; ISC licence, weights in the ``musicnn==0.1.0`` wheel) was trained on the Million Song
Dataset's (``msd``) or MagnaTagATune's (``mtt``) 50 most common tags from 3-s patches of a
96-band log-mel spectrogram (preset ``musicnn``: 16 kHz, n_fft 512, hop 256, 187 frames,
``log10(10000 x + 1)``). melgenre ships both checkpoints converted to safetensors
(``python -m melgenre.models.convert_musicnn``; nothing is downloaded at run time) and matches the
TensorFlow original within 1e-4 on the taggram (tested against references made with TF).

The architecture, layer for layer as the TF graph (conv -> ReLU -> BatchNorm, eps 1e-3):

* front end on the (time, mel) patch: input BN; timbral convs (7 x 38 and 7 x 67 mel bins, 204
  filters each, time-padded by 3) and temporal convs (128, 64, 32 frames x 1 bin, 51 filters each,
  TF "same" padding), each max-pooled over all mel bins -> 561 channels per frame;
* mid end: three 1-D convs of 64 filters over 7 frames with residual connections; the front end's
  561 and the three 64-channel outputs are stacked to 753 channels per frame;
* back end: max and mean over time (``max_pool``, ``mean_pool``: 753 each), BN, dense 200 + ReLU +
  BN (``penultimate``), dense to the 50 tag logits (``taggram`` = their sigmoid).

For genres, a head (BatchNorm standardisation + dropout + linear) maps a chosen embedding to
``num_classes`` logits; ``freeze=True`` keeps the pretrained part fixed (a linear probe).
``tag_prior`` adds, in eval mode only, the tagger's own logits of genre-named tags (MSD's "rock",
"jazz", "Hip-Hop", ...) to the head's logits: a zero-shot opinion learnt from a million songs,
which no artist of the training clips shaped (see :func:`prior_map`).
Inputs are ``(N, 1, 96, T)`` mel images like every registry model (rows = mel bands); any T >= 32
works for ``musicnn``, T = 187 for ``musicnn_vgg``.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melgenre.errors import ConfigError
from melgenre.models.registry import register_model

BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default
N_MELS = 96
PATCH_FRAMES = 187

MSD_TAGS = ("rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
            "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
            "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
            "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist",
            "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy", "catchy", "funk",
            "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy")
MTT_TAGS = ("guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
            "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
            "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal",
            "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance",
            "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal",
            "female voice", "choral")
TAGS = {"msd": MSD_TAGS, "mtt": MTT_TAGS}

#: Embedding name -> size, per architecture.
EMBEDDINGS = {
    "musicnn": {"mean_pool": 753, "max_pool": 753, "pool": 1506, "penultimate": 200, "pool+penultimate": 1706},
    "vgg": {"pool5": 256},
}


def weights_file(arch: str, dataset: str) -> str:
    """File name of a shipped converted checkpoint, e.g. ``musicnn_msd.safetensors``."""
    return f"{arch}_{dataset}.safetensors"


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS)


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class FreqPooledConv(nn.Module):
    """Conv2d over (time, mel) -> ReLU -> BN -> max over mel bins: ``(B, 1, T, F)`` -> ``(B, C, T')``.

    ``time_pad`` is (before, after) zero padding along time: (3, 3) for the 7-frame timbral
    filters, TF's "same" split (k-1)//2, k//2 for the temporal ones.
    """

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int]):
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = _bn2d(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, *self.time_pad))  # pad time only
        bn = self.bn
        if self.training:
            return bn(torch.relu(self.conv(x))).amax(3)
        # Eval mode: ReLU and BN are per-channel monotone maps, so they commute with the max over
        # mel bins (BN decreasing where gamma < 0, taking the min there): the max of the conv output
        # alone is pooled, with the kernels of negative-gamma channels negated (min z = -max -z).
        # Exact, and it skips ReLU, BN and a min over the largest (B, C, T, F') maps.
        sign = torch.where(bn.weight >= 0, 1.0, -1.0)
        z = F.conv2d(x, self.conv.weight * sign[:, None, None, None], self.conv.bias * sign)
        pooled = torch.relu(z.amax(3) * sign[None, :, None])
        return F.batch_norm(pooled, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class MidEndConv(nn.Module):
    """1-D conv over 7 frames -> ReLU -> BN (the mid end's layers; time-padded by 3)."""

    def __init__(self, c_in: int, c_out: int = 64):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 7, padding=3)
        self.bn = _bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


class GenreHead(nn.Module):
    """Standardise an embedding (BatchNorm without affine), dropout, linear to ``num_classes``.

    The BatchNorm keeps a cumulative average (``momentum=None``): on a frozen tagger's
    embeddings its running mean and variance converge to the training set's, a standardiser.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, momentum=None)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x)))


def prior_map(tag_prior: dict[str, Any], classes: list[str] | None, tags: tuple[str, ...],
              num_classes: int) -> torch.Tensor:
    """The ``(num_classes, 50)`` matrix that turns tag logits into genre prior logits.

    Row ``c`` is ``weight`` × the mean of the one-hot rows of ``genres[classes[c]]``'s tags; a class
    without tags gets the mean of the mapped rows (on average neither pushed up nor down against
    them). Genres of the mapping that are not among ``classes`` are ignored.

    Raises
    ------
    ConfigError
        No class names, an unknown tag, a weight that is not a number > 0, or no class with tags.
    """
    if not isinstance(tag_prior, dict) or set(tag_prior) != {"weight", "genres"}:
        raise ConfigError("tag_prior must be {weight: W, genres: {genre: [tag, ...]}}")
    weight, genres = tag_prior["weight"], tag_prior["genres"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ConfigError(f"tag_prior.weight must be a number > 0, got {weight!r}")
    if classes is None or len(classes) != num_classes:
        raise ConfigError("tag_prior needs the class names in logit order (classes; training sets them)")
    index = {t: i for i, t in enumerate(tags)}
    prior = np.zeros((num_classes, len(tags)), dtype=np.float32)  # NumPy: the model may be built on "meta"
    for c, genre in enumerate(classes):
        names = genres.get(genre) or []
        unknown = [t for t in names if t not in index]
        if unknown:
            raise ConfigError(f"tag_prior: unknown tag(s) {', '.join(map(repr, unknown))} for {genre!r}; "
                              f"the tags are {', '.join(tags)}")
        for t in names:
            prior[c, index[t]] = 1 / len(names)
    mapped = prior.sum(1) > 0
    if not mapped.any():
        raise ConfigError(f"tag_prior: no class of {', '.join(classes)} has tags")
    prior[~mapped] = prior[mapped].mean(0)
    return torch.as_tensor(float(weight) * prior)


class _Tagger(nn.Module):
    """What both ports share: pretrained weights, the genre head, freezing, tags, the tag prior."""

    arch = ""
    TAG_INPUT = ""  # the embedding the tag layer reads

    def _finish(self, num_classes: int, in_channels: int, pretrained: str | None, embedding: str,
                dropout: float, freeze: bool, tag_prior: dict[str, Any] | None = None,
                classes: list[str] | None = None, fuse: dict[str, Any] | None = None) -> None:
        if in_channels != 1:
            raise ConfigError(f"in_channels must be 1 (musicnn takes one log-mel channel), got {in_channels}")
        if pretrained not in (None, "msd", "mtt"):
            raise ConfigError(f"pretrained must be msd, mtt or null, got {pretrained!r}")
        sizes = EMBEDDINGS[self.arch]
        if embedding not in sizes:
            raise ConfigError(f"embedding must be one of {', '.join(sizes)}, got {embedding!r}")
        self.embedding = embedding
        self.tags = TAGS[pretrained or "msd"]
        self.own_size = sizes[embedding]
        # a second frozen tagger (built before the head: the head's linear stays the model's last one)
        self.fused = _fused_tagger(fuse, classes, num_classes, embedding, pretrained) if fuse else None
        head_size = self.own_size + (self.fused.size if self.fused is not None and self.fused.head else 0)
        self.head = GenreHead(head_size, num_classes, dropout)
        self.tag_prior = tag_prior is not None
        if self.tag_prior:
            if not embedding.endswith(self.TAG_INPUT):
                raise ConfigError(f"tag_prior needs an embedding that ends with {self.TAG_INPUT} (the tag layer's "
                                  f"input), got {embedding!r}")
            matrix = prior_map(tag_prior, classes, self.tags, num_classes)
            if self.fused is not None and self.fused.prior:
                # a genre without a tag of its own here but with one of the second tagger's gets its prior
                # from that tagger alone (not this tagger's mean of the other genres' tags)
                own = {g for g, t in tag_prior["genres"].items() if t}
                theirs = {g for g, t in self.fused.prior_genres.items() if t}
                matrix[[c in theirs and c not in own for c in classes]] = 0
            # a buffer in the state dict: the prior is part of the weights (and of the model id)
            self.register_buffer("prior_map", matrix)
        self.freeze = freeze
        # on the meta device (parameter counts) there is nothing to load the weights into
        if pretrained is not None and not self.head.fc.weight.is_meta:
            from safetensors.torch import load_file

            path = resources.files("melgenre.weights").joinpath(weights_file(self.arch, pretrained))
            with resources.as_file(path) as file:
                self.load_state_dict(load_file(str(file)), strict=False)
        if freeze:
            for name, p in self.named_parameters():
                p.requires_grad = name.startswith("head.")

    def train(self, mode: bool = True) -> _Tagger:
        """Frozen backbones stay in eval mode (BN statistics and dropout of the pretrained part)."""
        super().train(mode)
        if self.freeze and mode:
            for name, child in self.named_children():
                if name != "head":
                    child.eval()
        return self

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def taggram(self, x: torch.Tensor) -> torch.Tensor:
        """Tag probabilities ``(N, 50)`` of each patch (names in ``self.tags``)."""
        return torch.sigmoid(self.features(x)["tag_logits"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Genre logits of mel patches ``(N, 1, 96, T)``, or of cached embeddings ``(N, 1, 1, D)``
        (the rows of a ``melgenre embed`` store: training the head on them skips the tagger).

        With a ``tag_prior`` (or a ``fuse`` prior), eval mode adds the prior's logits; training fits
        the head alone (trained with the prior added, the head learns to cancel it on the training
        artists: measured)."""
        full = self.full_input(x)
        logits = self.head(self.head_input(full))
        if not self.training:
            if self.tag_prior:
                logits = logits + self.prior_logits(full)
            if self.fused is not None and self.fused.prior:
                logits = logits + self.fused.prior_logits(full[:, -self.fused.size:])
        return logits

    def full_input(self, x: torch.Tensor) -> torch.Tensor:
        """This tagger's embedding and, with ``fuse``, the second tagger's after it ``(N, D [+ D2])``: the
        row of a cached-embedding store (fused stores: ``tools/merge_stores.py --concat``)."""
        if not torch.jit.is_tracing() and x.shape[-2] == 1:  # (an export traces mel patches)
            return x.flatten(1)
        own = self.features(x)[self.embedding]
        if self.fused is None:
            return own
        return torch.cat([own, self.fused.embed(x)], 1)

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding the head reads ``(N, D)``, of mel patches, cached embeddings (as :meth:`forward`)
        or a :meth:`full_input` (without ``fuse.head`` the second tagger's part is left out)."""
        if x.dim() != 2:
            x = self.full_input(x)
        return x if self.fused is None or self.fused.head else x[:, :self.own_size]

    def tag_logits(self, emb: torch.Tensor) -> torch.Tensor:
        """The tagger's 50 tag logits ``(N, 50)`` from a ``tag_prior`` model's head input."""
        own = emb[:, :self.own_size]
        return self.tag_fc(own[:, -self.tag_fc.in_features:])

    def prior_logits(self, emb: torch.Tensor) -> torch.Tensor:
        """The tag prior's genre logits ``(N, C)`` (see :func:`prior_map`) from the head input."""
        return self.tag_logits(emb) @ self.prior_map.T


@register_model(
    "musicnn",
    description="Pretrained musicnn tagger (Pons & Serra 2019; MSD or MTT weights), genre head on its embeddings",
    default_input=(1, N_MELS, PATCH_FRAMES),
)
class MusiCNN(_Tagger):
    """musicnn with a genre head; ``features(x)`` also gives the taggram and embeddings.

    Parameters
    ----------
    num_classes : int
        Genre logits of the head.
    in_channels : int
        Must be 1.
    pretrained : {"msd", "mtt", None}
        Shipped tagger weights to start from (None: random init).
    embedding : str
        What the head reads: ``penultimate`` (200), ``mean_pool`` / ``max_pool`` (753), ``pool``
        (both, 1506) or ``pool+penultimate`` (1706).
    dropout : float
        Dropout before the head's linear layer.
    freeze : bool
        Train the head only (the tagger stays fixed, BN in eval mode).
    tag_prior : dict, optional
        ``{"weight": w, "genres": {genre: [tag, ...]}}``: in eval mode, add ``w`` × the mean logit of
        each genre's tags (:func:`prior_map`). Needs ``classes`` and an embedding ending with
        ``penultimate``.
    classes : list of str, optional
        The genre of each logit, in order (training sets it from the data).
    fuse : dict, optional
        ``{"pretrained": "mtt", "embedding": E, "head": bool, "tag_prior": {"weight", "genres"[, "fill"]}}``:
        a second frozen musicnn tagger (:class:`FusedTagger`); with ``head`` its embedding ``E`` is
        appended to the head's input, with ``tag_prior`` its genre-named tags add a prior as
        ``tag_prior`` does (``fill: zero``: genres without its tags get none), and a genre it has tags for
        that ``tag_prior`` has none for (classical, from MTT's "classical") gets no ``tag_prior`` row (no
        mean of the other genres' MSD tags). Cached-embedding rows
        are then this tagger's embedding followed by the second's.
    """

    arch = "musicnn"
    TAG_INPUT = "penultimate"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, pretrained: str | None = "msd",
                 embedding: str = "pool+penultimate", dropout: float = 0.5, freeze: bool = False,
                 tag_prior: dict[str, Any] | None = None, classes: list[str] | None = None,
                 fuse: dict[str, Any] | None = None):
        super().__init__()
        _musicnn_layers(self)
        self._finish(num_classes, in_channels, pretrained, embedding, dropout, freeze, tag_prior, classes, fuse)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embeddings and tag logits of ``(N, 1, 96, T)`` patches (as the TF graph computes them)."""
        return _musicnn_features(self, x)


def _musicnn_layers(m: nn.Module) -> None:
    """musicnn's tagger layers, as attributes of ``m`` (the names of the converted checkpoints)."""
    m.input_bn = _bn2d(1)
    timbral = [FreqPooledConv(204, (7, int(f * N_MELS)), (3, 3)) for f in (0.4, 0.7)]
    temporal = [FreqPooledConv(51, (k, 1), ((k - 1) // 2, k // 2)) for k in (128, 64, 32)]
    m.frontend = nn.ModuleList(timbral + temporal)
    m.midend = nn.ModuleList([MidEndConv(561), MidEndConv(64), MidEndConv(64)])
    m.pool_bn = _bn(2 * 753)
    m.dense = nn.Linear(2 * 753, 200)
    m.dense_bn = _bn(200)
    m.tag_fc = nn.Linear(200, 50)


def _musicnn_features(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Embeddings and tag logits of ``(N, 1, 96, T)`` patches by the layers of :func:`_musicnn_layers`."""
    x = m.input_bn(x.transpose(2, 3))  # (N, 1, T, F): TF's [batch, time, freq] layout
    front = torch.cat([block(x) for block in m.frontend], 1)  # (N, 561, T)
    m1 = m.midend[0](front)
    m2 = m.midend[1](m1) + m1
    m3 = m.midend[2](m2) + m2
    stack = torch.cat([front, m1, m2, m3], 1)  # (N, 753, T)
    max_pool, mean_pool = stack.amax(2), stack.mean(2)
    # TF flattens [max, mean] stacked on a last axis: features interleave max_i, mean_i
    pooled = torch.stack([max_pool, mean_pool], 2).flatten(1)
    penultimate = m.dense_bn(torch.relu(m.dense(m.pool_bn(pooled))))
    return {"mean_pool": mean_pool, "max_pool": max_pool, "pool": torch.cat([mean_pool, max_pool], 1),
            "penultimate": penultimate, "pool+penultimate": torch.cat([mean_pool, max_pool, penultimate], 1),
            "tag_logits": m.tag_fc(penultimate)}


class FusedTagger(nn.Module):
    """A second frozen musicnn tagger beside the model's own (``fuse``): its embedding may join the
    head's input (``head``) and its own genre-named tags may add a zero-shot prior (``tag_prior``).

    The MTT tagger (MagnaTagATune) has tags the MSD one lacks (``classical``, ``classic``, ``opera``,
    ``strings``, ``harpsichord``, ``techno``, ...). Always in eval mode, never trained.
    """

    def __init__(self, pretrained: str, embedding: str, head: bool, tag_prior: dict[str, Any] | None,
                 classes: list[str] | None, num_classes: int):
        super().__init__()
        if pretrained not in ("msd", "mtt"):
            raise ConfigError(f"fuse.pretrained must be msd or mtt, got {pretrained!r}")
        if embedding not in EMBEDDINGS["musicnn"]:
            raise ConfigError(f"fuse.embedding must be one of {', '.join(EMBEDDINGS['musicnn'])}, got {embedding!r}")
        _musicnn_layers(self)
        self.pretrained, self.embedding, self.head = pretrained, embedding, bool(head)
        self.size = EMBEDDINGS["musicnn"][embedding]
        self.tags = TAGS[pretrained]
        self.prior = tag_prior is not None
        if self.prior:
            if not embedding.endswith("penultimate"):
                raise ConfigError(f"fuse.tag_prior needs an embedding that ends with penultimate, got {embedding!r}")
            spec = dict(tag_prior)
            self.prior_genres = dict(spec.get("genres") or {})
            fill = spec.pop("fill", "mean")
            if fill not in ("mean", "zero"):
                raise ConfigError(f"fuse.tag_prior.fill must be mean or zero, got {fill!r}")
            matrix = prior_map(spec, classes, self.tags, num_classes)
            if fill == "zero":  # genres without tags of this tagger get no prior from it
                own = {g for g, t in spec["genres"].items() if t}
                matrix[[c not in own for c in classes]] = 0
            self.register_buffer("prior_map", matrix)
        if not self.tag_fc.weight.is_meta:
            from safetensors.torch import load_file

            path = resources.files("melgenre.weights").joinpath(weights_file("musicnn", pretrained))
            with resources.as_file(path) as file:
                state = load_file(str(file))
            self.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=False)
        for p in self.parameters():
            p.requires_grad = False
        self.eval()

    def train(self, mode: bool = True) -> FusedTagger:
        """Stays in eval mode (frozen BN statistics)."""
        return super().train(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Its embedding ``(N, size)`` of ``(N, 1, 96, T)`` patches."""
        return _musicnn_features(self, x)[self.embedding]

    def prior_logits(self, emb: torch.Tensor) -> torch.Tensor:
        """Its tag prior's genre logits ``(N, C)`` from its embedding."""
        return self.tag_fc(emb[:, -self.tag_fc.in_features:]) @ self.prior_map.T


def _fused_tagger(fuse: dict[str, Any], classes: list[str] | None, num_classes: int, embedding: str,
                  pretrained: str | None) -> FusedTagger:
    if not isinstance(fuse, dict) or not set(fuse) <= {"pretrained", "embedding", "head", "tag_prior"}:
        raise ConfigError("fuse must be {pretrained: mtt, embedding: E, head: true|false, tag_prior: {...}}")
    return FusedTagger(fuse.get("pretrained", "mtt"), fuse.get("embedding", "pool+penultimate"),
                       fuse.get("head", True), fuse.get("tag_prior"), classes, num_classes)


@register_model(
    "musicnn_vgg",
    description="Pretrained musicnn VGG baseline (5 x conv3x3-128; MSD or MTT weights), genre head on pool5",
    default_input=(1, N_MELS, PATCH_FRAMES),
)
class MusiCNNVGG(_Tagger):
    """The VGG tagger shipped with musicnn (3-s patches of exactly 187 frames).

    Parameters are those of :class:`MusiCNN`; its only embedding is ``pool5`` (256).
    """

    arch = "vgg"
    TAG_INPUT = "pool5"
    POOLS = ((4, 1), (2, 2), (2, 2), (2, 2), (4, 4))  # (time, mel) max-pool sizes, stride (2,2) first

    def __init__(self, num_classes: int = 10, in_channels: int = 1, pretrained: str | None = "msd",
                 embedding: str = "pool5", dropout: float = 0.5, freeze: bool = False,
                 tag_prior: dict[str, Any] | None = None, classes: list[str] | None = None):
        super().__init__()
        self.input_bn = _bn2d(1)
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else 128, 128, 3, padding=1) for i in range(5)])
        self.bns = nn.ModuleList([_bn2d(128) for _ in range(5)])
        self.tag_fc = nn.Linear(256, 50)
        self._finish(num_classes, in_channels, pretrained, embedding, dropout, freeze, tag_prior, classes)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pool5`` (256) and the tag logits of ``(N, 1, 96, 187)`` patches."""
        x = self.input_bn(x.transpose(2, 3))  # (N, 1, T, F)
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            stride = (2, 2) if i == 0 else self.POOLS[i]
            x = F.max_pool2d(bn(torch.relu(conv(x))), self.POOLS[i], stride)
        pool5 = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens NHWC: (time, mel, channel)
        return {"pool5": pool5, "tag_logits": self.tag_fc(pool5)}


def embedding_spec(spec: dict[str, Any], preset: Any = None) -> dict[str, Any]:
    """Validate and complete an embedder spec ``{model, pretrained, embedding}`` (adds ``size``).

    ``preset`` (when given) must be the tagger's input preset ``musicnn``.
    """
    spec = {"model": "musicnn", "pretrained": "msd", **spec}
    arch = {"musicnn": "musicnn", "musicnn_vgg": "vgg"}.get(spec["model"])
    if arch is None:
        raise ConfigError(f"embed: model must be musicnn or musicnn_vgg, got {spec['model']!r}")
    spec.setdefault("embedding", "pool+penultimate" if arch == "musicnn" else "pool5")
    if spec["embedding"] not in EMBEDDINGS[arch]:
        raise ConfigError(f"embed: embedding must be one of {', '.join(EMBEDDINGS[arch])}, got {spec['embedding']!r}")
    if spec["pretrained"] not in ("msd", "mtt"):
        raise ConfigError(f"embed: pretrained must be msd or mtt, got {spec['pretrained']!r}")
    if preset is not None and (preset.n_mels, preset.sr, preset.norm) != (N_MELS, 16000, "log"):
        raise ConfigError(f"embed: {spec['model']} needs the musicnn preset, not {preset.name!r}")
    spec["size"] = EMBEDDINGS[arch][spec["embedding"]]
    return spec


@functools.lru_cache(maxsize=2)
def _tagger(key: str) -> nn.Module:
    spec = json.loads(key)
    if _in_worker():  # prepare's worker processes share the cores: one torch thread each
        torch.set_num_threads(1)
    from melgenre.models import build

    return build(spec["model"], pretrained=spec["pretrained"], embedding=spec["embedding"]).eval()


def _in_worker() -> bool:
    import multiprocessing

    return multiprocessing.current_process().name != "MainProcess"


def embed_images(images: np.ndarray, spec: dict[str, Any], batch: int = 16) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of mel patches ``(N, 96, T)`` by the tagger in ``spec``."""
    spec = embedding_spec(spec)
    model = _tagger(json.dumps({k: spec[k] for k in ("model", "pretrained", "embedding")}, sort_keys=True))
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch], dtype=np.float32))[:, None]
            out.append(model.features(x)[spec["embedding"]].numpy())
    return np.concatenate(out)


def embed_file(source: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The tagger's embeddings of one audio file's back-to-back 3-s patches (any length).

    Returns ``{"embeddings": (patches, D) float32, "starts": (patches,) seconds, "mean": (D,),
    "spec": the completed spec}``. Decoding errors are :class:`melgenre.errors.AudioDecodeError`.
    """
    from melgenre import audio, features

    spec = embedding_spec(spec)
    preset = features.get_preset("musicnn")
    images, starts, _ = features.whole_clip_chunks(audio.load(source, sr=preset.sr).samples, preset)
    emb = embed_images(images, spec)
    return {"embeddings": emb, "starts": np.array(starts, dtype=np.float32), "mean": emb.mean(0), "spec": spec}
