"""``pisces env``: versions, devices and decoders, as one block to paste into bug reports."""

from __future__ import annotations

import importlib
import platform
import shutil
import sys

import typer


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # an optional package may fail to import in many ways
        return f"not available ({type(exc).__name__})"
    return str(getattr(mod, "__version__", "installed"))


def collect() -> list[tuple[str, str]]:
    """(name, value) lines describing this installation."""
    from pisces_cli import __version__

    rows = [
        ("pisces", __version__),
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
    ]
    for name, module in [
        ("torch", "torch"),
        ("diffusers", "diffusers"),
        ("transformers", "transformers"),
        ("peft", "peft"),
        ("accelerate", "accelerate"),
        ("POT", "ot"),
        ("safetensors", "safetensors"),
        ("numpy", "numpy"),
        ("decord", "decord"),
        ("PyAV", "av"),
        ("opencv", "cv2"),
    ]:
        rows.append((name, _version(module)))
    try:
        import torch

        rows.append(("cuda available", str(torch.cuda.is_available())))
        if torch.cuda.is_available():
            rows.append(("cuda", str(torch.version.cuda)))
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                rows.append((f"gpu {i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
            rows.append(("tf32 matmul", str(torch.backends.cuda.matmul.allow_tf32)))
        rows.append(("torch threads", str(torch.get_num_threads())))
        from pisces_cli.runtime import tune_cpu_allocator

        rows.append(("cpu allocator", tune_cpu_allocator()))
    except Exception as exc:
        rows.append(("torch", f"error: {exc}"))
    rows.append(("decoders", ", ".join(available_decoders()) or "none"))
    rows.append(("h264 writer", "libx264" if _has_libx264() else "no (mpeg4 fallback)"))
    rows.append(("ffmpeg binary", shutil.which("ffmpeg") or "not found (not needed)"))
    return rows


def available_decoders() -> list[str]:
    out = []
    for name, module in (("decord", "decord"), ("pyav", "av")):
        try:
            importlib.import_module(module)
            out.append(name)
        except Exception:
            pass
    return out


def _has_libx264() -> bool:
    try:
        import av

        av.codec.Codec("libx264", "w")
        return True
    except Exception:
        return False


def env() -> None:
    """Print versions, devices and available video decoders (paste this into bug reports)."""
    rows = collect()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name.ljust(width)}  {value}")
