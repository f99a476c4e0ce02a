"""Helpers shared by the commands: messages, errors, signatures, runtime settings, JSON."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

LATENT_KEY = "X_mosaicvi"
DEFAULT_DEMO_OUT = "mosaicvi_demo"
DEFAULT_FIT_OUT = "mosaicvi_output"
DEFAULT_BENCHMARK_OUT = "mosaicvi_benchmark"
DEFAULT_MODEL = "multivae"


class CLIError(Exception):
    """A user-facing error: printed as ``error: ...`` and turned into exit code 2."""


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``--out`` (checked before any work starts)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is an existing file, not a folder; pass a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: the folder is not writable; pass a folder you can write to")
    return out


def check_accelerator(accelerator: str) -> None:
    """A GPU accelerator needs a GPU (Lightning's own error is a traceback)."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CLIError(
            f"--accelerator {accelerator}: no CUDA GPU is available on this machine; use "
            "--accelerator cpu (or auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise CLIError("--accelerator mps: MPS is not available on this machine; use cpu")


def say(msg: str) -> None:
    """One progress line on stdout."""
    print(f"[mosaicvi] {msg}", flush=True)


def clean_message(exc: BaseException) -> str:
    """The message of an exception, without the quotes a ``KeyError`` adds."""
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = str(exc.args[0])
    return msg or exc.__class__.__name__


def accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` has a parameter called ``name`` (``**kwargs`` does not count)."""
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):  # no introspectable signature
        return False


def given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments that were set (not None): the model's defaults apply to the rest."""
    return {k: v for k, v in kwargs.items() if v is not None}


def configure_runtime(args: argparse.Namespace) -> None:
    """Threads, seeds, quiet logging, non-interactive plotting."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    import torch

    torch.set_num_threads(max(1, args.threads))
    check_accelerator(getattr(args, "accelerator", "auto"))
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many mdataers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*Cannot join columns with the same name.*")

    import scvi

    scvi.settings.seed = args.seed
    scvi.settings.verbosity = logging.WARNING
    logging.getLogger("mosaicvi").setLevel(logging.INFO)  # setup choices stay visible


def threads() -> int:
    """CPU threads torch uses."""
    import torch

    return torch.get_num_threads()


def quiet_trainer_kwargs() -> dict[str, Any]:
    """Trainer options that keep the terminal readable (the progress bar stays on a TTY)."""
    return {"enable_progress_bar": sys.stderr.isatty(), "enable_model_summary": False}


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy / pandas values turned into JSON types (non-finite floats: None)."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.Series | pd.DataFrame):
        return jsonable(obj.to_dict())
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return round(obj, 4) if np.isfinite(obj) else None
    return obj
