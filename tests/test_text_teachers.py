"""Text-to-image latent teachers (issue #19) on a tiny Stable-Diffusion-style folder with random
weights built by the test (tests/conftest.py): loading, prompts as classes, VAE decoding in the
evaluator, and DDIM, BOOT and DMD2 end to end through `bench run` into MLflow."""
import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import BenchError
from conftest import tiny_text_pipeline


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny_text_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipe")


def test_a_pipeline_folder_is_a_latent_teacher_with_prompts_as_classes(sd_folder, tmp_path):
    from bench.teachers import load_teacher
    from bench.teachers.text import DEFAULT_PROMPTS, read_prompts, use_prompts

    teacher = load_teacher("sd15", path=str(sd_folder))
    assert (teacher.sample_shape, teacher.output_shape) == ((4, 8, 8), (3, 16, 16))
    assert teacher.num_classes == len(read_prompts(DEFAULT_PROMPTS)) == 20 and not teacher.clip_x0
    # class c is prompt c's text states; label K (and no label) the empty prompt's
    assert torch.equal(teacher.net.context, teacher.text.encode([*teacher.text.prompts, ""]))
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), 500
    torch.testing.assert_close(teacher.x0(x, t, None), teacher.x0(x, t, torch.tensor([20, 20])))
    assert not torch.allclose(teacher.x0(x, t, torch.tensor([0, 0])), teacher.x0(x, t, torch.tensor([1, 1])))
    tt = torch.full((2,), float(t))  # the network itself (students copy it): no label = the empty prompt
    torch.testing.assert_close(teacher.net(x, tt, None), teacher.net(x, tt, torch.tensor([20, 20])))
    z = teacher.x0(x, t, torch.tensor([0, 1]))
    images = teacher.text.decode(z)  # SD's VAE reads latents / scaling_factor (0.18215)
    with torch.no_grad():
        by_hand = teacher.text.vae.decode(z / 0.18215).sample.clamp(-1, 1)
    assert images.shape == (2, 3, 16, 16) and torch.allclose(images, by_hand, atol=1e-6)
    (tmp_path / "p.txt").write_text("a cat\n\na dog\na boat\n")
    before = teacher.fingerprint()
    use_prompts(teacher, read_prompts(tmp_path / "p.txt"))
    assert teacher.num_classes == 3 and teacher.net.context.shape[0] == 4
    assert teacher.fingerprint() != before  # teacher references are cached per prompt list


def test_incomplete_folders_and_missing_weights_are_one_line(sd_folder, tmp_path):
    from bench.teachers import load_teacher

    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(BenchError, match="lacks vae/, text_encoder/, tokenizer/, scheduler/"):
        load_teacher("sd15", path=str(tmp_path / "half"))
    with pytest.raises(BenchError, match="not in the local Hugging Face cache") as no_weights:
        load_teacher("sd21base")
    assert "\n" not in str(no_weights.value)
    from bench.assemble import load_run_teacher
    from bench.run_config import RunConfig

    with pytest.raises(BenchError, match="prompts file .* does not exist; pass --prompts FILE"):
        load_run_teacher(RunConfig(teacher="gmm2d", prompts=str(tmp_path / "p.txt")), torch.device("cpu"))
    (tmp_path / "p.txt").write_text("a cat\n")
    with pytest.raises(BenchError, match="--prompts needs a text-to-image teacher"):
        load_run_teacher(RunConfig(teacher="gmm2d", prompts=str(tmp_path / "p.txt")), torch.device("cpu"))


@pytest.mark.parametrize("method,sets", [("ddim", []),
                                         ("boot", ["--set", "iterations=3", "--set", "batch_size=4"]),
                                         ("dmd2", ["--set", "iterations=2", "--set", "batch_size=4"])])
def test_methods_run_end_to_end_on_latents(sd_folder, tmp_path, tracking_uri, method, sets):
    """Guided (w = 2) on 3 prompts: samples are decoded 3x16x16 images, scored (KID on the pixels,
    against the teacher's own decoded DDIM samples), and the run is in MLflow with its prompts."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "p.txt").write_text("a cat\na dog\na boat\n")
    trains = ["--set", "eval_every=0", "--set", "checkpoint_every=0"] if method != "ddim" else []
    assert main(["run", "--method", method, "--teacher", "sd15", "--teacher-path", str(sd_folder), "--nfe", "1",
                 "--prompts", str(tmp_path / "p.txt"), "--guidance-scale", "2", "--features", "points",
                 "--metrics", "kid", "--num-samples", "12", "--batch-size", "6", "--reference", "teacher",
                 "--reference-samples", "12", "--reference-steps", "2", "--fidelity-steps", "0",
                 *sets, *trains, "--tracking-uri", tracking_uri, "--experiment", "sd", "--quiet",
                 "--no-system-metrics"]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sd").experiment_id])
    p = run.data.params
    assert (p["teacher"], p["guidance_scale"], p["label"], p["prompts"]) == ("sd15", "2.0", f"{method} w=2",
                                                                          str(tmp_path / "p.txt"))
    assert np.isfinite(run.data.metrics["kid"])
    x = np.load(client.download_artifacts(run.info.run_id, "samples/nfe_1.npz", str(tmp_path)))["x"]
    assert x.shape == (12, 3, 16, 16) and np.abs(x).max() <= 1
    if method != "ddim":
        assert run.data.metrics["teacher_forwards"] > 0
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "student" in names  # the latent student ships as a model (its images are latents)


def test_clip_score_is_100_times_the_clamped_cosine_of_clips_own_embeddings(tmp_path):
    """Against transformers' own CLIPModel forward (its image_embeds and text_embeds, unit
    vectors): 100 max(cos, 0), image i against prompt labels[i], on the same preprocessed pixels."""
    from transformers import CLIPModel, CLIPTokenizer

    from bench.clip_score import CLIP_MEAN, CLIP_STD, clip_scorer
    from conftest import tiny_clip_model

    folder = tiny_clip_model(tmp_path / "clip")
    prompts = ["a cat", "a dog", "a boat"]
    score = clip_scorer(folder, prompts, torch.device("cpu"))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.tensor([0, 2, 1, 0])
    got = score(images, labels)
    model, tok = CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder)
    ids = tok([prompts[i] for i in labels], padding="max_length", max_length=16, return_tensors="pt").input_ids
    pixels = ((images + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    cos = (out.image_embeds.double() * out.text_embeds.double()).sum(-1)
    torch.testing.assert_close(got, (100 * cos).clamp(min=0), rtol=1e-4, atol=1e-4)
    assert (cos < 0).any() and (cos > 0).any(), cos  # both sides of the clamp are exercised


def test_clip_score_of_a_run_and_its_missing_model(sd_folder, tmp_path, tracking_uri, capfd):
    from mlflow.tracking import MlflowClient

    from conftest import tiny_clip_model

    args = ["run", "--teacher", "sd15", "--teacher-path", str(sd_folder), "--nfe", "2", "--features", "points",
            "--metrics", "kid", "--num-samples", "8", "--reference", "teacher", "--reference-samples", "8",
            "--reference-steps", "2", "--fidelity-steps", "0", "--tracking-uri", tracking_uri, "--quiet",
            "--no-system-metrics", "--experiment", "clip"]
    assert main([*args, "--clip-model", str(tmp_path / "nowhere")]) == 2
    assert "CLIP score needs a local CLIP model folder" in capfd.readouterr().err
    assert main([*args, "--clip-model", str(tiny_clip_model(tmp_path / "clip"))]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("clip").experiment_id])
    assert 0 <= run.data.metrics["clip_score"] <= 100
    assert [m.step for m in client.get_metric_history(run.info.run_id, "clip_score")] == [2]
