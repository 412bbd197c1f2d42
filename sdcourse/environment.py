"""What the course runs on: versions, device, offline mode."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "ipywidgets", "sdcourse")


def pick_device() -> torch.device:
    """The fastest device available: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def report() -> dict:
    """{name: value} describing this environment."""
    info = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = "not installed"
    info["device"] = str(pick_device())
    info["cpu threads"] = torch.get_num_threads()
    info["offline (HF_HUB_OFFLINE)"] = is_offline()
    return info


def print_report() -> None:
    for name, value in report().items():
        print(f"{name:>26}: {value}")
