"""Devices and dtypes as a user names them: refused at the start with the key named, never replaced or left to
fail inside torch (this machine may have no GPU: CUDA is faked where the code asks torch about it)."""

from __future__ import annotations

import pytest
import torch

from pisces_cli import runtime
from pisces_cli.config import load_recipe
from pisces_cli.errors import UsageError


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports CUDA with two devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize(
    "spec", ["cudafoo", "cuda:x", "cuda:-1", "cuda:0:1", "mps", "meta", "cpu:0", "CPU", "gpu"]
)
def test_the_recipe_refuses_a_device_it_cannot_run_on(spec: str) -> None:
    with pytest.raises(UsageError, match=r"runtime.device: expected auto, cpu, cuda or cuda:N"):
        load_recipe("wan", [f"runtime.device={spec}"])


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_the_recipe_takes_every_device_form_it_documents(spec: str) -> None:
    assert load_recipe("wan", [f"runtime.device={spec}"]).recipe.runtime.device == spec


def test_cuda_past_the_visible_devices_is_refused_naming_the_key(two_gpus, monkeypatch) -> None:
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(
        UsageError, match=r"^runtime.device='cuda:7': this machine shows 2 CUDA device\(s\), cuda:0"
    ):
        runtime.resolve_device("cuda:7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(UsageError, match=r"CUDA_VISIBLE_DEVICES=3,5"):
        runtime.resolve_device("cuda:2", key="device")


def test_devices_torch_would_fail_on_later_are_usage_errors(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"^runtime.device='cuda:0': CUDA is not available"):
        runtime.resolve_device("cuda:0")
    with pytest.raises(UsageError, match=r"^device='mps': MPS is not available"):
        runtime.resolve_device("mps", key="device")  # was torch's RuntimeError when the model moved there
    with pytest.raises(UsageError, match=r"^device='meta': pisces runs on 'cpu' or 'cuda'"):
        runtime.resolve_device("meta", key="device")
    with pytest.raises(
        UsageError, match=r"^runtime.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'cudafoo'"
    ):
        runtime.resolve_device("cudafoo")
    assert runtime.resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cudafoo", "cuda:x"])
def test_the_cli_refuses_a_bad_device_before_loading_anything(spec, tmp_path, capsys) -> None:
    """``runtime.device=cudafoo`` passed the recipe check and died in torch (exit 1, torch's message)."""
    from pisces_cli.cli.main import main

    videos = tmp_path / "videos"
    videos.mkdir()
    assert main(["score", str(videos), "--recipe", "wan", f"runtime.device={spec}"]) == 2
    assert f"runtime.device: expected auto, cpu, cuda or cuda:N, got '{spec}'" in capsys.readouterr().err


def test_preflight_fails_a_gpu_index_past_the_visible_ones(monkeypatch) -> None:
    from pisces_cli.preflight import devices
    from pisces_cli.preflight.report import PreflightReport, Status

    monkeypatch.setattr(devices, "visible_gpus", lambda: [("Fake GPU", 80 * 2**30)] * 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    report = PreflightReport()
    devices.check_gpus(load_recipe("wan", ["runtime.device=cuda:7"]).recipe, report)
    (row,) = report.checks
    assert row.status is Status.FAIL and "cuda:7: 2 GPU(s) visible" in row.detail
    report = PreflightReport()
    devices.check_gpus(load_recipe("wan", ["runtime.device=cuda:1"]).recipe, report)
    assert report.checks[0].status is Status.OK


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8, 3, "half", "bf16"])
def test_the_api_refuses_a_dtype_an_encoder_cannot_run_in(dtype, tmp_path) -> None:
    import pisces_cli

    with pytest.raises(pisces_cli.UsageError, match="^dtype must be 'float32', 'bfloat16', 'float16'"):
        pisces_cli.load_encoder(
            "clip", tmp_path, device="cpu", dtype=dtype
        )  # refused before the path is read


def test_stage_device_applies_allow_tf32_to_matmuls_and_convolutions(monkeypatch) -> None:
    """torch leaves cuDNN TF32 on by default: a stage must switch it off when the recipe says false."""
    from pisces_cli.config.sections.common import RuntimeSection

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert runtime.stage_device(RuntimeSection(device="cpu", allow_tf32=False)) == torch.device("cpu")
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        runtime.stage_device(RuntimeSection(device="cpu", allow_tf32=True))
        assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _no_half_layer_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch build without a CPU float16 layer_norm kernel (as older builds lacked several)."""
    import torch.nn.functional as F

    real = F.layer_norm

    def layer_norm(inputs, *args, **kwargs):
        if inputs.dtype == torch.float16:
            raise NotImplementedError("\"LayerNormKernelImpl\" not implemented for 'Half'")
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(F, "layer_norm", layer_norm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_on_this_cpu(dtype) -> None:
    runtime.check_reduced_precision(dtype, torch.device("cpu"), "models.encoder.dtype")
    runtime.check_reduced_precision(dtype, torch.device("cpu"), "finetune.mixed_precision", autocast=True)


def test_half_precision_this_torch_cannot_run_is_refused_naming_the_key(monkeypatch) -> None:
    _no_half_layer_norm(monkeypatch)
    with pytest.raises(
        UsageError, match=r"^models.encoder.dtype: this torch .* cannot compute in float16 on cpu"
    ):
        runtime.check_reduced_precision(torch.float16, torch.device("cpu"), "models.encoder.dtype")
    runtime.check_reduced_precision(torch.bfloat16, torch.device("cpu"), "models.encoder.dtype")
    runtime.check_reduced_precision(torch.float16, torch.device("cuda"), "models.encoder.dtype")  # not probed


def test_autocast_that_torch_switches_off_is_refused(monkeypatch) -> None:
    """Older torch warned "CPU Autocast only supports bfloat16" and ran fp32: an fp16 label on an fp32 run."""
    import contextlib

    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    with pytest.raises(
        UsageError,
        match=r"^finetune.mixed_precision: .*autocast to float16 ran in torch.float32.*set it to no",
    ):
        runtime.check_reduced_precision(
            torch.float16, torch.device("cpu"), "finetune.mixed_precision", autocast=True
        )


def test_score_and_the_api_refuse_a_half_encoder_before_loading_it(tmp_path, monkeypatch, capsys) -> None:
    import pisces_cli
    from pisces_cli.cli.main import main
    from pisces_cli.encoders import registry

    def no_load(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    save_tiny_clip(tmp_path / "encoder", "clip", seed=0)
    monkeypatch.setattr(registry, "load_encoder", no_load)
    _no_half_layer_norm(monkeypatch)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"runtime: {{device: cpu}}\nmodels: {{encoder: {{path: {tmp_path}/encoder, dtype: float16}}}}\n"
    )
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"\0")
    (videos / "a.txt").write_text("a prompt")
    assert main(["score", str(videos), "-r", str(recipe)]) == 2
    assert "models.encoder.dtype: this torch" in capsys.readouterr().err
    with pytest.raises(pisces_cli.UsageError, match="^dtype: this torch"):
        pisces_cli.load_encoder("clip", tmp_path / "encoder", device="cpu", dtype="float16")


def test_build_reward_refuses_a_device_or_dtype_a_loaded_encoder_does_not_have(tmp_path) -> None:
    """They were ignored: build_reward(encoder, dtype="bfloat16") ran the fp32 encoder under a bf16 call."""
    import pisces_cli
    from pisces_cli.encoders.tiny_clip import save_tiny_clip

    encoder = pisces_cli.load_encoder(
        "clip", save_tiny_clip(tmp_path / "encoder", "clip", seed=0), device="cpu"
    )
    with pytest.raises(
        pisces_cli.UsageError, match=r"dtype='bfloat16' but the loaded encoder is torch.float32"
    ):
        pisces_cli.build_reward(encoder, dtype="bfloat16")
    with pytest.raises(pisces_cli.UsageError, match=r"device='meta'"):
        pisces_cli.build_reward(encoder, device="meta")
    with pytest.raises(pisces_cli.UsageError, match="encoder_options apply when loading"):
        pisces_cli.build_reward(encoder, encoder_options={"num_frames": 4})
    reward = pisces_cli.build_reward(encoder, device="cpu", dtype=torch.float32)  # what it has: fine
    assert reward.encoder is encoder
