"""The machine a search runs on, described: what `auto` and the cost estimates read.

A `DeviceInfo` is either read from the device present (`device_info("cuda:0")`: its
name, total and free memory, the GPUs of the node) or described (`DESCRIBED["h100-80gb"]`,
or any `DeviceInfo(...)`), so that the choice of an index kind and the dry run's plan can
be computed, and tested, for a GPU this machine does not have. Throughputs are the
figures a cost model scales: described values are round priors, and
`segfungi.experiments.benchmark.probe` replaces them with ones measured on the device present
(`DeviceInfo.calibrated`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GB = 10**9


@dataclass(frozen=True)
class DeviceInfo:
    """A search device. Throughputs in FLOP/s and bytes/s (achieved, not peak)."""

    kind: str = "cpu"  # cpu | cuda (torch's device type)
    name: str = "CPU"
    total_memory: int = 0  # bytes on one device (0: unknown, e.g. the CPU's, read elsewhere)
    free_memory: int = 0  # bytes free now on one device
    count: int = 1  # devices of this kind on the node (GPUs a bank can be sharded over)
    half_flops: float = 5e9  # float16/bfloat16 matmul (tensor cores on a GPU)
    float_flops: float = 20e9  # float32 matmul (TF32 off)
    host_to_device: float = 10e9  # bytes/s copied from host memory to the device

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def calibrated(self, **measured: float) -> "DeviceInfo":
        """The same device with measured throughputs (`half_flops=...`, ...)."""
        return dataclasses.replace(self, **{key: value for key, value in measured.items() if value})


# Described devices (round priors for the throughputs: dense matmul as reached in practice).
DESCRIBED = {
    "cpu": DeviceInfo(),
    "h100-80gb": DeviceInfo("cuda", "NVIDIA H100 80GB", 80 * GB, 79 * GB, 1, 400e12, 45e12, 20e9),
    "h200": DeviceInfo("cuda", "NVIDIA H200", 141 * GB, 140 * GB, 1, 450e12, 50e12, 20e9),
    "a100-80gb": DeviceInfo("cuda", "NVIDIA A100 80GB", 80 * GB, 79 * GB, 1, 220e12, 17e12, 16e9),
}


def device_info(device=None) -> DeviceInfo:
    """`device` described: a DeviceInfo as it is, a name of DESCRIBED ("h100-80gb"), or a
    torch device ("cpu", "cuda", "cuda:1"), read from the machine (memory free now)."""
    if isinstance(device, DeviceInfo):
        return device
    if device is None:
        return DESCRIBED["cpu"]
    name = str(device)
    if name in DESCRIBED:
        return DESCRIBED[name]
    if not name.startswith("cuda"):
        return dataclasses.replace(DESCRIBED["cpu"], kind=name.split(":")[0])
    import torch

    if not torch.cuda.is_available():
        return dataclasses.replace(DESCRIBED["cpu"], kind="cuda", name="CUDA (not available)")
    index = torch.device(name).index
    index = torch.cuda.current_device() if index is None else index
    free, total = torch.cuda.mem_get_info(index)
    prior = DESCRIBED["h100-80gb"]
    return dataclasses.replace(prior, name=torch.cuda.get_device_name(index), total_memory=int(total),
                               free_memory=int(free), count=torch.cuda.device_count())
