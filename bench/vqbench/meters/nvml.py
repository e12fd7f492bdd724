"""NVIDIA GPU energy through NVML: the total-energy counter, or sampled power where needed.

Volta and later GPUs expose a cumulative energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules). It updates only every few tens of
milliseconds on some boards and then reads an unchanged value across a short window. So every
window also samples board power (``nvmlDeviceGetPowerUsage``, milliwatts) in a thread, and the
meter uses:

- the counter (``measured-nvml``) when every GPU has one, the window lasts at least
  ``min_counter_window_s`` and the counter advanced on every GPU;
- otherwise the trapezoid integral of the power samples (``measured-nvml-power-sampling``),
  with a warning that gives the reason.

The NVML library is injectable: tests pass a fake object with the same functions.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from vqbench.errors import MeterError
from vqbench.meters.base import Availability, EnergyMeter, EnergyReading
from vqbench.meters.options import (
    BOOLEAN,
    INDEX_LIST,
    NON_NEGATIVE_NUMBER,
    POSITIVE_NUMBER,
    OptionSpec,
)

logger = logging.getLogger(__name__)

_MJ_PER_J = 1e3
_MW_PER_W = 1e3


def load_nvml() -> Any:
    """Import the NVML bindings (nvidia-ml-py, module ``pynvml``); raise MeterError if absent."""
    try:
        with warnings.catch_warnings():
            # The pynvml wrapper package warns at import that it is deprecated.
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except ImportError as error:
        raise MeterError("NVML bindings not installed: pip install nvidia-ml-py") from error
    return pynvml


class _PowerSampler(threading.Thread):
    """Samples power of every GPU every ``interval_s`` until stopped."""

    def __init__(self, read_powers_w, interval_s: float):
        super().__init__(name="vqbench-nvml-sampler", daemon=True)
        self._read_powers_w = read_powers_w
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self.samples: list[tuple[float, list[float]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self._stop_event.wait(self._interval_s):
            try:
                self.samples.append((time.perf_counter(), self._read_powers_w()))
            except MeterError as error:
                self.error = error
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class _NvmlToken:
    start_s: float
    start_counters_mj: list[int] | None
    sampler: _PowerSampler
    first_sample: tuple[float, list[float]] = field(default_factory=lambda: (0.0, []))


def integrate_samples_j(samples: list[tuple[float, list[float]]]) -> list[float]:
    """Integrate per-GPU power samples ``(time_s, [power_w, ...])`` with the trapezoid rule."""
    n_gpus = len(samples[0][1])
    energies_j = [0.0] * n_gpus
    for (t0_s, p0_w), (t1_s, p1_w) in zip(samples, samples[1:]):
        for gpu in range(n_gpus):
            energies_j[gpu] += 0.5 * (p0_w[gpu] + p1_w[gpu]) * (t1_s - t0_s)
    return energies_j


class NvmlMeter(EnergyMeter):
    """GPU energy from NVML for the listed devices (all devices by default)."""

    name = "nvml"
    method = "measured-nvml"
    sampling_method = "measured-nvml-power-sampling"
    option_specs = {
        "device_indices": OptionSpec(
            INDEX_LIST, "NVML indices of the GPUs to measure (default: all)", nullable=True
        ),
        "sample_interval_s": OptionSpec(
            POSITIVE_NUMBER, "interval between power samples, in seconds"
        ),
        "min_counter_window_s": OptionSpec(
            NON_NEGATIVE_NUMBER, "shortest window that uses the energy counter, in seconds"
        ),
        "force_power_sampling": OptionSpec(
            BOOLEAN, "integrate sampled power even where the energy counter exists"
        ),
    }

    def __init__(
        self,
        device_indices: tuple[int, ...] | None = None,
        nvml: Any | None = None,
        sample_interval_s: float = 0.02,
        min_counter_window_s: float = 0.5,
        force_power_sampling: bool = False,
    ):
        self.device_indices = device_indices
        self.sample_interval_s = sample_interval_s
        self.min_counter_window_s = min_counter_window_s
        self.force_power_sampling = force_power_sampling
        self._nvml = nvml
        self._handles: list[Any] | None = None
        self._has_counter: bool | None = None

    # -- library access -------------------------------------------------------------------

    def _library(self) -> Any:
        if self._nvml is None:
            self._nvml = load_nvml()
        return self._nvml

    def _nvml_call(self, function_name: str, *args: Any) -> Any:
        nvml = self._library()
        try:
            return getattr(nvml, function_name)(*args)
        except nvml.NVMLError as error:
            raise MeterError(f"NVML {function_name} failed: {error}") from error

    def _get_handles(self) -> list[Any]:
        if self._handles is None:
            self._nvml_call("nvmlInit")
            count = self._nvml_call("nvmlDeviceGetCount")
            if count == 0:
                raise MeterError("NVML found no GPU")
            indices = self.device_indices if self.device_indices is not None else range(count)
            for index in indices:
                if not 0 <= index < count:
                    raise MeterError(f"GPU index {index} is invalid: NVML found {count} GPUs")
            self._handles = [self._nvml_call("nvmlDeviceGetHandleByIndex", i) for i in indices]
        return self._handles

    def _counter_supported(self) -> bool:
        if self._has_counter is None:
            try:
                self._read_counters_mj()
                self._has_counter = True
            except MeterError as error:
                logger.warning(
                    "NVML energy counter unavailable (%s); sampling power instead", error
                )
                self._has_counter = False
        return self._has_counter

    def _read_counters_mj(self) -> list[int]:
        return [
            int(self._nvml_call("nvmlDeviceGetTotalEnergyConsumption", handle))
            for handle in self._get_handles()
        ]

    def _read_powers_w(self) -> list[float]:
        return [
            self._nvml_call("nvmlDeviceGetPowerUsage", handle) / _MW_PER_W
            for handle in self._get_handles()
        ]

    # -- EnergyMeter ----------------------------------------------------------------------

    def probe(self) -> Availability:
        try:
            handles = self._get_handles()
            self._read_powers_w()
            counter = self._counter_supported()
        except MeterError as error:
            return Availability(False, str(error))
        mode = "energy counter and power sampling" if counter else "power sampling only"
        return Availability(True, f"NVML: {len(handles)} GPU(s), {mode}")

    def begin(self) -> _NvmlToken:
        use_counter = self._counter_supported() and not self.force_power_sampling
        sampler = _PowerSampler(self._read_powers_w, self.sample_interval_s)
        first_sample = (time.perf_counter(), self._read_powers_w())
        start_counters_mj = self._read_counters_mj() if use_counter else None
        token = _NvmlToken(first_sample[0], start_counters_mj, sampler, first_sample)
        sampler.start()
        return token

    def end(self, token: _NvmlToken) -> EnergyReading:
        end_counters_mj = self._read_counters_mj() if token.start_counters_mj is not None else None
        last_sample = (time.perf_counter(), self._read_powers_w())
        token.sampler.stop()
        if token.sampler.error is not None:
            raise token.sampler.error
        duration_s = last_sample[0] - token.start_s

        counter_j = self._counter_energies_j(token.start_counters_mj, end_counters_mj, duration_s)
        if counter_j is not None:
            return self._reading(counter_j, duration_s, self.method)
        samples = [token.first_sample, *token.sampler.samples, last_sample]
        return self._reading(integrate_samples_j(samples), duration_s, self.sampling_method)

    def _counter_energies_j(
        self, start_mj: list[int] | None, end_mj: list[int] | None, duration_s: float
    ) -> list[float] | None:
        if start_mj is None or end_mj is None:
            return None
        deltas_mj = [end - start for start, end in zip(start_mj, end_mj)]
        if duration_s < self.min_counter_window_s:
            logger.warning(
                "NVML window of %.3f s is shorter than min_counter_window_s=%.3f s; using "
                "sampled power", duration_s, self.min_counter_window_s,
            )
            return None
        if any(delta <= 0 for delta in deltas_mj):
            logger.warning(
                "NVML energy counter did not advance over %.3f s (deltas %s mJ): it is too "
                "coarse for this window; using sampled power", duration_s, deltas_mj,
            )
            return None
        return [delta / _MJ_PER_J for delta in deltas_mj]

    def _reading(self, energies_j: list[float], duration_s: float, method: str) -> EnergyReading:
        indices = self.device_indices or tuple(range(len(energies_j)))
        domains_j = {f"gpu{index}": energy for index, energy in zip(indices, energies_j)}
        return EnergyReading(sum(energies_j), duration_s, method, domains_j)

    def close(self) -> None:
        if self._handles is not None:
            self._handles = None
            try:
                self._library().nvmlShutdown()
            except self._library().NVMLError as error:
                logger.warning("NVML shutdown failed: %s", error)
