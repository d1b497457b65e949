"""Is the torch / torchvision pair installed one that works together? Checked once per
command that loads a model, before any work.

torchvision's compiled operators are built against one torch release; with another, its
import fails with a 40-line traceback ending in `operator torchvision::nms does not
exist`, which names neither package's version nor the fix. Since torch 2.0 a release
2.m pairs with torchvision 0.(m + 15) (2.14 ↔ 0.29), so the message can name the
torchvision to install, from the same wheel index as torch (its local version, e.g.
`+cpu`, `+cu130`, names the index).
"""

from __future__ import annotations

import sys
from importlib import metadata

from segfungi.infra.errors import InstallError

__all__ = ["check_torch_pair", "matching_torchvision"]

WHEEL_INDEX = "https://download.pytorch.org/whl/"
TORCHVISION_OFFSET = 15  # torch 2.m <-> torchvision 0.(m + 15)


def check_torch_pair() -> None:
    """Import torchvision; refuse, naming the versions and the fix, when it cannot load."""
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # RuntimeError (operator ... does not exist), ImportError, OSError (a .so)
        raise InstallError(_message(err)) from None


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release series for a torch version ("2.14.1+cpu" -> "0.29.*")."""
    parts = torch_version.split("+")[0].split(".")
    if len(parts) < 2 or parts[0] != "2" or not parts[1].isdigit():
        return None
    return f"0.{int(parts[1]) + TORCHVISION_OFFSET}.*"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _message(err: Exception) -> str:
    # torch.__version__ keeps the local part (+cpu, +cu130) that names the wheel index.
    torch = sys.modules.get("torch")
    torch_version = getattr(torch, "__version__", None) or _version("torch")
    vision_version = _version("torchvision")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(err).__name__
    wanted = matching_torchvision(torch_version or "")
    local = (torch_version or "").partition("+")[2]
    index = f" --index-url {WHEEL_INDEX}{local}" if local else ""
    fix = (f"pip install 'torchvision=={wanted}'{index}" if wanted
           else f"pip install torch torchvision{index} (the two from one release)")
    return (f"torch {torch_version or '?'} and torchvision {vision_version or 'not installed'} do not work "
            f"together: importing torchvision fails ({reason}). Install the torchvision built for this torch: {fix}")
