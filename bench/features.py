"""Feature extractors for FID/KID, registered in FEATURES (and, for images, in torch-fidelity).

* ``digits-cnn``: the penultimate layer (64-D) of a small classifier trained on the digits
  training split, weights shipped in ``bench/assets``. FID on these features is *not*
  Inception FID: every run logs ``feature_extractor`` next to its ``fid`` so the two are never
  mixed up, and tables label the column ``FID[digits-cnn]``.
* ``points``: the samples themselves (low-dimensional analytic teachers such as ``gmm2d``).

An extractor maps float samples in the teacher's data range, (B, *sample_shape), to float64
features (B, D). Image extractors see what a saved PNG would hold: samples are quantised to
uint8 first, as torch-fidelity expects.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from bench.errors import BenchError
from bench.files import sha256_of, to_uint8
from bench.registry import FEATURES

ASSETS = Path(__file__).resolve().parent / "assets"
DIGITS_CNN_WEIGHTS = ASSETS / "digits_cnn.safetensors"


@dataclasses.dataclass
class FeatureExtractor:
    name: str
    dim: int
    weights_sha256: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    version: int = 1  # bump when the preprocessing or the layer read changes: cached references renew
    classify: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # samples -> class ids, if a classifier

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x).double().cpu()

    @torch.no_grad()
    def classes(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's class of each sample (on the CPU); only where ``classify`` is set."""
        return self.classify(x).cpu()


class DigitsCNN(nn.Module):
    """8x8 digit classifier; ``features`` is its 64-D penultimate activation, standardised with
    the training digits' per-dimension mean and std (stored with the weights) so FID and the
    polynomial KID kernel see unit-scale features, as they do with Inception's pool features."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.SiLU(),
        )
        self.head = nn.Linear(64, 10)
        self.register_buffer("feat_mean", torch.zeros(64))
        self.register_buffer("feat_std", torch.ones(64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.body(x) - self.feat_mean) / self.feat_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _torch_fidelity_class():
    """The digits CNN as a torch-fidelity FeatureExtractorBase (uint8 Bx3x8x8 input)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class DigitsCNNFidelity(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = load_digits_cnn()

        @staticmethod
        def get_provided_features_list():
            return ("64",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "64"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            x = x[:, :1].float() / 127.5 - 1.0  # back to the data range [-1, 1]
            return (self.net.features(x),)

    return DigitsCNNFidelity


def load_digits_cnn(path: Path = DIGITS_CNN_WEIGHTS) -> DigitsCNN:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise BenchError(f"digits feature weights {path} are missing; run `bench features train digits`")
    net = DigitsCNN()
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


_fidelity_registered = False


@FEATURES.register("digits-cnn", "64-D features of a digits classifier (shipped); not Inception")
def digits_cnn(device: str = "cpu", **_: object) -> FeatureExtractor:
    global _fidelity_registered
    from torch_fidelity import register_feature_extractor

    cls = _torch_fidelity_class()
    if not _fidelity_registered:  # torch-fidelity's registry rejects a second registration
        register_feature_extractor("digits-cnn", cls)
        _fidelity_registered = True
    extractor = cls("digits-cnn", ("64",)).to(device)  # where the samples are (a GPU run found it on the CPU)

    def classify(x: torch.Tensor) -> torch.Tensor:  # the digit it reads, from the same uint8 images
        return extractor.net(to_uint8(x).to(device)[:, :1].float() / 127.5 - 1.0).argmax(1)

    return FeatureExtractor("digits-cnn", 64, sha256_of(DIGITS_CNN_WEIGHTS),
                            lambda x: extractor(to_uint8(x).to(device))[0], classify=classify)


@FEATURES.register("points", "the samples themselves, flattened (low-dimensional analytic teachers)")
def points(**_: object) -> FeatureExtractor:
    return FeatureExtractor("points", -1, "", lambda x: x.flatten(1))


INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "BENCH_INCEPTION_WEIGHTS"


def inception_weights_path(path: str | None = None) -> Path:
    """--inception-weights, else $BENCH_INCEPTION_WEIGHTS, else torch hub's checkpoint cache."""
    import os

    candidates = [path, os.environ.get(INCEPTION_ENV),
                  str(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise BenchError(
        f"Inception weights not found (looked at {', '.join(str(c) for c in candidates if c)}); "
        f"download {INCEPTION_FILE} from torch-fidelity's v0.2.0 release on a connected machine and "
        f"pass --inception-weights PATH, set {INCEPTION_ENV}, or put it in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}")


@FEATURES.register("inception-v3-compat", "2048-D pool features of torch-fidelity's InceptionV3 (standard FID)")
def inception(inception_weights: str | None = None, device: str = "cpu", **_: object) -> FeatureExtractor:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = inception_weights_path(inception_weights)
    try:  # refuse a file that is not a plain state dict before torch-fidelity unpickles it
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"{path} is not a loadable InceptionV3 state dict ({type(exc).__name__}); "
                         f"replace it with {INCEPTION_FILE}") from None
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(path)).to(device)
    return FeatureExtractor("inception-v3-compat", 2048, sha256_of(path),
                            lambda x: net(to_uint8(x).to(device))[0])


def get_extractor(name: str, **options: object) -> FeatureExtractor:
    """Build a registered extractor; options (e.g. inception_weights, device) go to its factory."""
    return FEATURES.get(name)(**options)


def train_digits_cnn(out: Path = DIGITS_CNN_WEIGHTS, epochs: int = 40, seed: int = 0) -> float:
    """Train the digits feature CNN on the training split; returns held-out accuracy."""
    from bench.data import digits_split
    from bench.files import save_weights

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    (x, y), (xh, yh) = digits_split("train"), digits_split("heldout")
    net = DigitsCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(xh).argmax(1) == yh).double().mean().item()
        feats = net.body(x)
        net.feat_mean.copy_(feats.mean(0))
        net.feat_std.copy_(feats.std(0).clamp(min=1e-3))  # a dead unit must not blow up
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, Path(out))
    return accuracy
