"""Test environment (offline, quiet, CPU, a private MLflow store and cache per test) and the
helpers several test files share: subprocesses of ``python -m bench``, free ports, servers."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Reference caches go to a per-test folder, never the user's ~/.cache."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store, with the working directory in tmp_path (artifacts go there)."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def tiny_unet(in_channels: int = 1, size: int = 8, seed: int = 0, **kwargs):
    """A ~30k-parameter diffusers UNet2DModel with random weights."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=in_channels,
                       layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kwargs)


def bench_env(**extra) -> dict:
    """Environment of a ``python -m bench`` subprocess: offline, quiet, one thread per process
    (two threads on a shared 2-core machine can run 100x slower), unbuffered output."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", **extra}


def run_bench(args, cwd, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=bench_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd, cwd, url: str, timeout: float = 120) -> subprocess.Popen:
    """Start a server (its own process group) and wait until ``url`` answers."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=bench_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop_group(proc)
                raise AssertionError(f"{' '.join(map(str, cmd[:4]))} did not come up at {url}")
            time.sleep(0.5)


def bench_ui(tracking_uri: str, cwd) -> tuple[subprocess.Popen, str]:
    """``bench ui`` on a free port; returns the process and its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "bench", "ui", "--port", str(port), "--tracking-uri",
                         tracking_uri], cwd, base + "/", timeout=90)
    return proc, base


def stop_group(proc: subprocess.Popen, first=signal.SIGTERM) -> None:
    """Stop a process group: ``first``, then SIGKILL if it lingers."""
    for sig, wait in ((first, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def tiny_text_pipeline(folder, seed: int = 0):
    """A Stable-Diffusion-style folder with random weights, built here: a tiny UNet2DConditionModel
    (4x8x8 latents, cross-attention on 32-D text states), a tiny AutoencoderKL (x2: 3x16x16
    images), a tiny CLIP text model and a CLIP tokenizer whose vocabulary (the 256 byte
    characters, with and without the end-of-word mark) and empty merge list are written here,
    and SD's scheduler config (scaled-linear betas, eps-prediction, no clipping)."""
    from pathlib import Path

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         norm_num_groups=4, attention_head_dim=4).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  norm_num_groups=4, sample_size=16).save_pretrained(folder / "vae")
    tokenizer, text_config = _tiny_clip_text()
    tokenizer.save_pretrained(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(**text_config)).save_pretrained(folder / "text_encoder")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True,
                  steps_offset=1).save_pretrained(folder / "scheduler")
    return folder


def _tiny_clip_text():
    """A CLIP tokenizer whose vocabulary (the 256 byte characters, with and without the
    end-of-word mark, and the two special tokens) and empty merge list are made here, and the
    config of a tiny CLIP text tower on it (32-D states, 16 tokens)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    config = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                  eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16), config


def tiny_clip_model(folder, seed: int = 0):
    """A tiny CLIPModel with random weights (text tower as above, 32 px vision tower, 16-D
    projections) and its tokenizer, saved in ``folder`` as `hf download` would leave one."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tokenizer, text_config = _tiny_clip_text()
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4)
    CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def on_requested_component(sampler, n: int = 2000) -> tuple[float, float]:
    """One-step samples of class-conditional gmm2d (class c = component c) for n noises and labels
    i mod 8: (share nearest their own component, share within 3 std (0.15) of it)."""
    from bench.teachers.analytic import gmm2d_params

    eps, c = torch.randn(n, 2, generator=torch.Generator().manual_seed(5)), torch.arange(n) % 8
    with torch.no_grad():
        x = sampler(eps, c).float()
    nearest = torch.cdist(x, gmm2d_params()[0].float()).min(1)
    return float((nearest.indices == c).float().mean()), float((nearest.values < 0.15).float().mean())
