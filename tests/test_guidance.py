"""Classifier-free guidance and class labels through the harness (issue #19): the guided teacher
against a float64 reference written from the formula, its cost, the clipping order, and
per-sample labels in the evaluator."""
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.evaluator import SampleSpec, generate, seed_labels
from bench.nfe import NetworkCalls
from bench.schedule import NoiseSchedule
from bench.teachers.analytic import gmm2d_params, mixture_teacher
from bench.teachers.base import Provenance, Teacher

CPU = torch.device("cpu")


class LabelNet(nn.Module):
    """eps_theta(x, t, c) = x * (1 + t / T) + shift[c]: each label, and "no class" (row K), moves
    the output by its own known amount, so guided outputs have a closed form."""

    def __init__(self, K: int, D: int, T: int):
        super().__init__()
        self.T = T
        self.register_buffer("shift", torch.linspace(-2.0, 2.0, (K + 1) * D, dtype=torch.float64).view(K + 1, D))

    def forward(self, x, t, c):
        return x * (1 + t.double()[:, None] / self.T) + self.shift[c]


def _label_teacher(w: float = 1.0, clip: bool = True) -> Teacher:
    sched = NoiseSchedule.linear(100)
    return Teacher(LabelNet(4, 3, 100), sched, "epsilon", (3,), Provenance("test"), clip_x0=clip,
                   num_classes=4, is_image=False, guidance_scale=w)


def _reference(x, t, c, w, K=4, T=100):
    """Guided eps, then x0 = (x - sigma eps) / alpha, then the clip: all in float64."""
    net = LabelNet(K, x.shape[1], T)
    tt = torch.full((len(x),), float(t), dtype=torch.float64)
    e_c, e_u = net(x, tt, c), net(x, tt, torch.full_like(c, K))
    eps = e_u + w * (e_c - e_u)
    ab = NoiseSchedule.linear(T).alphas_cumprod.double()[t]
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    return x0, x0.clamp(-1, 1), eps


@pytest.mark.fast
@pytest.mark.parametrize("w", [1.0, 2.5, 4.0])
def test_guided_prediction_equals_the_formula_before_clipping(w):
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    c, t = torch.tensor([0, 1, 2, 3, 4, 1]), 20  # label 4 = no class
    x0, eps = _label_teacher(w).predict(x, t, c)
    raw, clipped, _ = _reference(x, t, c, w)
    torch.testing.assert_close(x0, clipped, rtol=1e-6, atol=1e-6)
    if w != 1.0:  # guidance on the output, then clip: not the guided combination of clipped x0s
        _, clip_c, _ = _reference(x, t, c, 1.0)
        _, clip_u, _ = _reference(x, t, torch.full_like(c, 4), 1.0)
        assert (clip_u + w * (clip_c - clip_u) - clipped).abs().max() > 1e-2
        assert 0 < int((raw != clipped).sum()) < raw.numel()  # the clip bites on some entries
    a = NoiseSchedule.linear(100).alphas_cumprod.double()[t]
    torch.testing.assert_close(x, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=1e-6, atol=1e-6)


@pytest.mark.fast
def test_a_guided_row_is_one_call_of_two_teacher_rows():
    x, c = torch.randn(5, 3, dtype=torch.float64), torch.arange(5) % 4
    for w, rows in ((1.0, 5), (3.0, 10)):
        teacher = _label_teacher(w)
        with NetworkCalls() as calls:
            teacher.predict(x, 50, c)
        assert (calls.calls, calls.frozen_rows, teacher.forwards_per_row) == (1, rows, rows / 5)


@pytest.mark.fast
def test_no_label_is_the_unconditional_branch():
    teacher = mixture_teacher(*gmm2d_params(), conditional=True)
    plain = mixture_teacher(*gmm2d_params())
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(teacher.x0(x, 300, None), plain.x0(x, 300))
    torch.testing.assert_close(teacher.x0(x, 300, torch.full((8,), 8)), plain.x0(x, 300))
    assert not torch.allclose(teacher.x0(x, 300, torch.zeros(8, dtype=torch.long)), plain.x0(x, 300))


@pytest.mark.fast
def test_guided_mixture_against_float64_reference():
    teacher = mixture_teacher(*gmm2d_params(), conditional=True)
    guided = teacher.replace(guidance_scale=3.0)
    x, c = torch.randn(8, 2, generator=torch.Generator().manual_seed(2)), torch.arange(8)
    f_c, f_u = teacher.x0(x.double(), 500, c), teacher.x0(x.double(), 500, None)
    torch.testing.assert_close(guided.x0(x, 500, c).double(), f_u + 3.0 * (f_c - f_u), rtol=1e-5, atol=1e-6)


@pytest.mark.fast
def test_guidance_needs_a_conditional_teacher():
    from bench.assemble import load_run_teacher
    from bench.run_config import RunConfig

    with pytest.raises(ValueError, match="class-conditional"):
        mixture_teacher(*gmm2d_params()).replace(guidance_scale=2.0)
    with pytest.raises(BenchError, match="needs a class-conditional teacher; 'gmm2d' is unconditional"):
        load_run_teacher(RunConfig(teacher="gmm2d", guidance_scale=2.0), CPU)


@pytest.mark.fast
def test_labels_follow_the_sample_index_not_the_batch():
    def sampler(noise, cond=None):
        return noise + cond[:, None].float()

    spec = dict(shape=(2,), n=30, seed=3, device=CPU, num_classes=8)
    a = generate(sampler, SampleSpec(batch_size=7, **spec)).samples
    b = generate(sampler, SampleSpec(batch_size=64, **spec)).samples
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert seed_labels(range(30), 8).tolist() == [i % 8 for i in range(30)]
    noise = generate(lambda n: n, SampleSpec(batch_size=5, **{**spec, "num_classes": None})).samples
    torch.testing.assert_close(a - noise, (torch.arange(30) % 8)[:, None].float().expand(30, 2))


@pytest.mark.fast
@pytest.mark.parametrize("shift,lo,hi", [(0, 0.95, 1.0), (1, 0.0, 0.05)])
def test_class_accuracy_reads_the_requested_digit(shift, lo, hi):
    """A "sampler" that returns held-out digits of the label it is asked for (shift 0) is read
    as that label by the digits classifier (98% held-out accuracy); one that returns the next
    digit (shift 1) almost never."""
    from bench.data import digits_split
    from bench.evaluator import ReferenceStats, evaluate
    from bench.features import get_extractor

    x, y = digits_split("heldout")
    extractor = get_extractor("digits-cnn")
    ref = ReferenceStats.from_features(extractor(digits_split("train")[0]))

    def sampler(noise, cond):
        which = (noise.flatten(1).abs().sum(1) * 1000).long() % 40  # a function of each sample's own noise
        picks = [int(torch.nonzero(y == (c + shift) % 10)[k]) for k, c in zip(which.tolist(), cond.tolist())]
        return x[picks].float()

    ev = evaluate(sampler, SampleSpec((1, 8, 8), 200, 0, 64, CPU, num_classes=10), ref, extractor,
                  metrics=("fid",))
    assert lo <= ev.class_accuracy <= hi, ev.class_accuracy
    ev7 = evaluate(sampler, SampleSpec((1, 8, 8), 200, 0, 7, CPU, num_classes=10), ref, extractor, metrics=("fid",))
    # any batch size: the same labels and samples (FID to float32 rounding of the batched CNN)
    assert (ev7.class_accuracy, ev7.fid) == (ev.class_accuracy, pytest.approx(ev.fid, rel=1e-6))
    assert "class_accuracy" in ev.metrics()
    plain = evaluate(lambda n: x[:len(n)].float(), SampleSpec((1, 8, 8), 200, 0, 64, CPU), ref, extractor,
                     metrics=("fid",))
    assert "class_accuracy" not in plain.metrics()  # unconditional samples have no requested class


def test_a_guided_conditional_run_end_to_end(tracking_uri, tmp_path, capsys):
    """`bench run --teacher gmm2d_cond --guidance-scale 2`: the run is labelled with its w, logs
    it as a param, scores against a teacher reference drawn with labels i mod 8, writes per-class
    FIDs, and `bench sample` rebuilds the guided sampler: its images are the run's own."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from bench.cli import main

    assert main(["run", "--teacher", "gmm2d_cond", "--guidance-scale", "2", "--nfe", "4,16", "--num-samples", "400",
                 "--reference", "teacher", "--reference-samples", "800", "--reference-steps", "16",
                 "--tracking-uri", tracking_uri, "--experiment", "cond", "--quiet", "--no-system-metrics"]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cond").experiment_id])
    p = run.data.params
    assert (p["label"], p["guidance_scale"], run.info.run_name) == ("ddim w=2", "2.0", "ddim w=2-gmm2d_cond-s0")
    per_class = np.genfromtxt(client.download_artifacts(run.info.run_id, "per_class_fid.csv", str(tmp_path)),
                              delimiter=",", names=True)
    assert sorted(set(per_class["label"].astype(int))) == list(range(8)) and set(per_class["nfe"]) == {4, 16}
    at16 = per_class[per_class["nfe"] == 16]["fid"]
    assert np.isfinite(at16).all() and at16.max() < 0.5  # its own sampler, against its own reference
    out = tmp_path / "s"
    assert main(["sample", "--run", run.info.run_id, "--nfe", "16", "--n", "40", "--out-dir", str(out),
                 "--tracking-uri", tracking_uri]) == 0
    logged = np.load(client.download_artifacts(run.info.run_id, "samples/nfe_16.npz", str(tmp_path)))["x"]
    np.testing.assert_allclose(np.load(out / "samples.npz")["x"], logged[:40], atol=1e-5)


def _unet_teacher(w: float = 1.0):
    """A tiny random class-embedding UNet (4 classes + no class) as diffusers would hold it."""
    from diffusers import DDPMScheduler

    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet

    net = tiny_unet(num_class_embeds=5).eval().requires_grad_(False)
    teacher = unet_teacher(net, DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction"),
                           Provenance("test"))
    teacher.guidance_scale = w
    return teacher


@pytest.mark.fast
def test_a_class_embedding_unet_is_k_classes_plus_no_class():
    teacher = _unet_teacher()
    assert teacher.num_classes == 4
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(teacher.x0(x, 50, None), teacher.x0(x, 50, torch.full((3,), 4)))
    assert not torch.allclose(teacher.x0(x, 50, None), teacher.x0(x, 50, torch.zeros(3, dtype=torch.long)))
    t = torch.full((3,), 50.0)  # the network itself (students copy it) reads no label as "no class"
    torch.testing.assert_close(teacher.net(x, t, None), teacher.net(x, t, torch.full((3,), 4)))


@pytest.mark.fast
def test_the_fake_score_follows_the_unguided_teacher():
    """DMD2's f_psi models the generator's conditional distribution: it starts as the teacher's
    network, unguided, while the real score f_phi is guided (so with w != 1 they differ at once)."""
    from bench import config as cfgs
    from methods.dmd2 import DMD2

    teacher = _unet_teacher(3.0)
    m = DMD2(teacher, cfgs.replace(DMD2.Config(), {"batch_size": 4}), CPU)
    x, c = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 3])
    plain = teacher.replace(guidance_scale=1.0, clip_x0=False)
    with torch.no_grad():
        torch.testing.assert_close(m.fake.x0(x, 40, c), plain.x0(x, 40, c))
        torch.testing.assert_close(m.real.x0(x, 40, c), teacher.replace(clip_x0=False).x0(x, 40, c))
        assert not torch.allclose(m.fake.x0(x, 40, c), m.real.x0(x, 40, c))
        # the generator loss compares the two at the generated samples' own labels
        t, eps = torch.full((3,), 40.0), torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        a, s = teacher.coefficients(t, x)
        f_real, f_fake = m.scores(x, t, eps, c)
        torch.testing.assert_close(f_real, teacher.replace(clip_x0=False).x0(a * x + s * eps, t, c))
        torch.testing.assert_close(f_fake, plain.x0(a * x + s * eps, t, c))


@pytest.mark.fast
def test_per_class_fid_scores_each_class_against_its_own_rows():
    """Two classes far apart: each class's samples against its own reference rows score ~0,
    while the pooled FID is not small for a sample set with the classes' shares swapped."""
    from bench.evaluator import ReferenceStats, fid_from_features, per_class_fid

    gen = torch.Generator().manual_seed(0)
    ref_x = torch.cat([torch.randn(400, 2, generator=gen) - 5, torch.randn(400, 2, generator=gen) + 5])
    ref = ReferenceStats.from_features(ref_x.double(), labels=torch.arange(800) // 400)
    fake, labels = torch.randn(300, 2, generator=gen).double(), torch.arange(300) % 2
    fake = fake + torch.where(labels == 0, -5.0, 5.0).double()[:, None]
    out = per_class_fid(fake, labels, ref, dim=2)
    assert set(out) == {0, 1} and max(out.values()) < 0.1, out
    assert fid_from_features(fake[labels == 0], ref_x) > 10  # one class against both: far
    assert set(per_class_fid(fake[:3], labels[:3], ref, dim=2)) == {0}  # class 1 has 1 row < dim: left out
