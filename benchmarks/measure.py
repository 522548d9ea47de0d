"""Timers, memory probes and summary statistics for benchmarks/bench.py."""

import gc
import re
import statistics
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch


class Clock:
    """Context manager that stores the wall time and process CPU time of its block, in seconds.

    On CUDA it synchronizes before starting and before stopping, so queued kernels count.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.wall = self.cpu = 0.0

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def __enter__(self):
        self._sync()
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0
        return False


def median_iqr(values: Sequence[float]) -> Dict[str, float]:
    """Return the median, first and third quartile and the values themselves."""
    values = list(values)
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "values": values}


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> Dict[str, float]:
    """Summarize per-round ratios, so that each ratio compares measurements of one round."""
    return median_iqr([n / d for n, d in zip(numerators, denominators)])


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def measure_peak_memory(step: Callable[[], None], device: str) -> float:
    """Run ``step`` and return the peak memory it added, in MiB.

    CUDA: the peak of ``torch.cuda.max_memory_allocated`` above the memory allocated before.
    CPU: the peak resident set size (VmHWM, reset through ``/proc/self/clear_refs``) above the
    resident size before. This counts freed tensors only once they leave the process, so the
    caller runs it with glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``), which
    returns every large block to the system when it is freed.
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    base = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - base) / 1024


def output_layer_calls(model, step: Callable[[], None]) -> List[List[int]]:
    """Run ``step`` and return the leading dimensions of every input to the output layer."""
    decoder = model.decoder
    original = decoder.output_layer
    shapes = []

    def counted(features, *args, **kwargs):
        shapes.append(list(features.shape[:-1]))
        return original(features, *args, **kwargs)

    decoder.output_layer = counted  # an instance attribute shadows the method
    try:
        step()
    finally:
        del decoder.output_layer
    return shapes


def cpu_model_name() -> str:
    """Return lscpu's model name from /proc/cpuinfo, or an empty string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


def host_reads(step: Callable[[], None]) -> Dict[str, Dict[str, int]]:
    """Run ``step`` and count the calls that read tensor values on the host, by call site.

    Wraps ``torch.Tensor.item``, ``tolist``, ``cpu``, ``numpy`` and the conversions to bool, int
    and float. Each call counts at its innermost frame in fairseq-halo or in fairseq's model code,
    and calls from anywhere else are not counted.

    Returns:
        ``{"fairseq_halo": {site: count}, "fairseq": {site: count}}`` with sites written as
        ``path:line:method``, the path starting at the package folder.
    """
    counts = {"fairseq_halo": {}, "fairseq": {}}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def record(name: str) -> None:
        for frame in reversed(traceback.extract_stack()[:-2]):  # skip record and counted
            for package, marker in (("fairseq_halo", "/fairseq_halo/"),
                                    ("fairseq", "/fairseq/models/"),
                                    ("fairseq", "/fairseq/modules/")):
                if marker in frame.filename:
                    path = package + "/" + frame.filename.split(f"/{package}/")[-1]
                    key = f"{path}:{frame.lineno}:{name}"
                    counts[package][key] = counts[package].get(key, 0) + 1
                    return

    def wrap(name: str):
        def counted(self, *args, **kwargs):
            record(name)
            return originals[name](self, *args, **kwargs)
        return counted

    for name in HOST_READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        step()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return counts
