import numpy as np
import pytest
import scipy.linalg
import torch

from bench.errors import BenchError
from bench.evaluator import FeatureStats, ReferenceStats, SampleSpec, evaluate, fid_from_features, generate, seed_noise
from bench.features import get_extractor
from bench.teachers import load_teacher


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.fast
@pytest.mark.parametrize("dim", [2, 16, 64])
def test_fid_matches_scipy_reference(dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(3000, dim))
    b = rng.normal(loc=0.1, scale=1.2, size=(2500, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim)
    ours = fid_from_features(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-6)


@pytest.mark.fast
@pytest.mark.parametrize("dim", [4, 64])
def test_fid_matches_pytorch_fid(dim):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(100 + dim)
    a, b = rng.normal(size=(2000, dim)), rng.gamma(2.0, size=(1500, dim))
    ref = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, rel=1e-6)


@pytest.mark.fast
def test_fid_too_few_samples():
    with pytest.raises(BenchError, match="raise --num-samples"):
        fid_from_features(torch.zeros(1, 4), torch.zeros(10, 4))


@pytest.mark.fast
def test_streamed_stats_equal_numpy():
    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(1000, 8)) * 3 + 1)
    stats = FeatureStats(keep=300)
    for chunk in f.split(77):
        stats.update(chunk)
    assert np.allclose(stats.mu, f.numpy().mean(0), rtol=1e-12)
    assert np.allclose(stats.sigma, np.cov(f.numpy(), rowvar=False), rtol=1e-10)
    assert stats.n == 1000 and torch.allclose(stats.kept.double(), f[:300], atol=1e-5)


@pytest.mark.fast
def test_seed_noise_is_per_sample():
    full = seed_noise(3, range(10), (2, 4))
    assert torch.equal(full[4:7], seed_noise(3, [4, 5, 6], (2, 4)))
    assert not torch.equal(full, seed_noise(4, range(10), (2, 4)))


def test_results_independent_of_batch_size():
    from bench.registry import METHODS

    teacher = load_teacher("gmm2d")
    extractor = get_extractor("points")
    ref = ReferenceStats.from_features(extractor(teacher.dataset()))
    cls = METHODS.get("ddim")
    sampler = cls(teacher, cls.Config(), torch.device("cpu")).sampler(4)
    dev = torch.device("cpu")
    e7 = evaluate(sampler, SampleSpec(teacher.sample_shape, 300, 5, 7, dev), ref, extractor)
    e64 = evaluate(sampler, SampleSpec(teacher.sample_shape, 300, 5, 64, dev), ref, extractor)
    assert torch.allclose(e7.samples, e64.samples, atol=1e-6)
    assert e7.fid == pytest.approx(e64.fid, abs=1e-5)
    assert e7.kid == pytest.approx(e64.kid, abs=1e-5)
    assert (e7.precision, e7.recall) == (e64.precision, e64.recall)
    assert 0 < e7.precision <= 1 and 0 < e7.recall <= 1
    assert (e7.batch_size, e64.batch_size) == (7, 64)


@pytest.mark.fast
def test_generate_timing_is_per_image():
    calls = []

    def sampler(noise):
        calls.append(len(noise))
        return noise * 0

    gen = generate(sampler, SampleSpec((3,), 10, 0, 4, torch.device("cpu")))
    assert calls == [4, 4, 4, 2]  # one warm-up batch, then the three real ones
    assert gen.samples.shape == (10, 3) and gen.seconds_per_image >= 0 and gen.batch_size == 4


def test_digits_features_shipped_and_discriminative():
    from bench.data import digits_split

    extractor = get_extractor("digits-cnn")
    assert extractor.dim == 64 and len(extractor.weights_sha256) == 64
    train, held = digits_split("train")[0], digits_split("heldout")[0]
    f_train, f_held = extractor(train), extractor(held)
    noise = torch.rand(len(held), 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    floor = fid_from_features(f_held, f_train)
    assert floor < 0.1 * fid_from_features(extractor(noise), f_train)


@pytest.mark.fast
def test_digits_features_live_on_the_requested_device():
    """A GPU run found the digits classifier left on the CPU while the samples were on CUDA
    (conv2d: 'Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor)').
    Here: the 'meta' device stands in for CUDA; every weight must be there."""
    from bench.features import get_extractor

    extractor = get_extractor("digits-cnn", device="meta")
    module = extractor.fn.__closure__  # the torch-fidelity module the extractor calls
    nets = [c.cell_contents for c in module if isinstance(c.cell_contents, torch.nn.Module)]
    assert nets and all(p.device.type == "meta" for net in nets for p in net.parameters())
