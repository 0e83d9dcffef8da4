"""ONNX Runtime sessions: execution providers from config, the provider actually in use, IO binding on GPUs.

``onnxruntime-gpu`` lists the CUDA and TensorRT providers even on a machine without a GPU and falls back to the CPU
when their libraries fail to load, so the provider in use is read from the created session, never assumed from
the request. Every fallback is logged with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.inference.errors import ModelLoadError
from schemas.config import (
    CpuProviderConfig,
    CudaProviderConfig,
    InferenceConfig,
    ProviderConfig,
    TensorRtProviderConfig,
)
from schemas.errors import ModelMetadataError
from schemas.onnxmeta import OnnxModelMetadata, read_metadata

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})
_PROVIDER_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}


@dataclass(frozen=True)
class ProviderChoice:
    """The providers asked for, what was skipped and why, and the provider the session really uses."""

    requested: tuple[str, ...]
    active: str
    fallback_reasons: tuple[str, ...] = ()

    @property
    def fell_back(self) -> bool:
        return self.active != self.requested[0]


@dataclass(frozen=True)
class LoadedModel:
    """An ONNX Runtime session with its metadata and the provider it runs on."""

    path: Path
    session: ort.InferenceSession
    metadata: OnnxModelMetadata
    providers: ProviderChoice
    device_id: int = 0
    input_name: str = field(default="")
    input_shape: tuple[int | str | None, ...] = ()
    input_dtype: np.dtype[Any] = field(default_factory=lambda: np.dtype(np.float32))

    @property
    def on_gpu(self) -> bool:
        return self.providers.active in GPU_PROVIDERS

    @property
    def static_batch(self) -> int | None:
        """The batch size baked into the model, or None when the batch axis is dynamic."""
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None


def _provider_entry(provider: ProviderConfig, cache_dir: Path, static_shapes: bool) -> tuple[str, dict[str, Any]]:
    if isinstance(provider, TensorRtProviderConfig):
        engine_dir = provider.engine_cache_dir or cache_dir / "trt-cache"
        engine_dir.mkdir(parents=True, exist_ok=True)
        return TENSORRT, {
            "device_id": provider.device_id,
            "trt_fp16_enable": provider.fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engine_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engine_dir),
            "trt_max_workspace_size": provider.max_workspace_bytes,
        }
    if isinstance(provider, CudaProviderConfig):
        options: dict[str, Any] = {
            "device_id": provider.device_id,
            "arena_extend_strategy": provider.arena_extend_strategy,
            # Graph capture needs fixed input addresses and shapes; with a dynamic batch it would fail per call.
            "enable_cuda_graph": "1" if provider.cuda_graph and static_shapes else "0",
        }
        if provider.gpu_mem_limit_bytes is not None:
            options["gpu_mem_limit"] = provider.gpu_mem_limit_bytes
        return CUDA, options
    return CPU, {}


def _session_options(config: InferenceConfig) -> ort.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; fallbacks are reported by us with their reason
    cpu = next((p for p in config.providers if isinstance(p, CpuProviderConfig)), None)
    if cpu is not None:
        options.intra_op_num_threads = cpu.intra_op_threads
        options.inter_op_num_threads = cpu.inter_op_threads
    return options


def load_model(path: Path, config: InferenceConfig, *, cache_dir: Path) -> LoadedModel:
    """Create a session for ``path`` on the first usable provider of ``config`` and read its metadata.

    Raises ``ModelLoadError`` for a missing, corrupt or undescribed model, naming the file.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    available = set(ort.get_available_providers())
    reasons: list[str] = []
    usable = []
    for provider in config.providers:
        name = _PROVIDER_NAMES[provider.kind]
        if name in available:
            usable.append(provider)
        else:
            reasons.append(f"{name} is not in this onnxruntime build (available: {', '.join(sorted(available))})")
    requested = tuple(_PROVIDER_NAMES[p.kind] for p in config.providers)
    if not any(isinstance(p, CpuProviderConfig) for p in usable):
        usable.append(CpuProviderConfig(kind="cpu"))
    session = _create(path, config, usable, cache_dir, static_shapes=False)
    shape = tuple(session.get_inputs()[0].shape)
    if any(isinstance(p, CudaProviderConfig) and p.cuda_graph for p in usable) and all(
        isinstance(d, int) for d in shape
    ):
        session = _create(path, config, usable, cache_dir, static_shapes=True)
    active = session.get_providers()[0]
    if active != requested[0] and not reasons:
        reasons.append(f"{requested[0]} failed to initialise (its libraries or the device are missing)")
    choice = ProviderChoice(requested=requested, active=active, fallback_reasons=tuple(reasons))
    if choice.fell_back:
        log.warning(
            "execution provider fallback",
            extra={"model_file": str(path), "requested": requested[0], "active": active, "reasons": reasons},
        )
    try:
        metadata = read_metadata(
            session.get_modelmeta().custom_metadata_map, source=str(path), fallback_name=_safe_name(path.stem)
        )
    except ModelMetadataError as exc:
        raise ModelLoadError(str(exc)) from None
    model_input = session.get_inputs()[0]
    device_id = next((p.device_id for p in usable if not isinstance(p, CpuProviderConfig)), 0)
    loaded = LoadedModel(
        path=path,
        session=session,
        metadata=metadata,
        providers=choice,
        device_id=device_id,
        input_name=model_input.name,
        input_shape=shape,
        input_dtype=np.dtype(np.float16 if model_input.type == "tensor(float16)" else np.float32),
    )
    log.info(
        "model loaded",
        extra={
            "model": metadata.name,
            "version": metadata.version,
            "task": metadata.task.value,
            "provider": active,
            "model_file": str(path),
        },
    )
    return loaded


def _create(
    path: Path, config: InferenceConfig, usable: Sequence[ProviderConfig], cache_dir: Path, *, static_shapes: bool
) -> ort.InferenceSession:
    import onnxruntime as ort

    providers = [_provider_entry(p, cache_dir, static_shapes) for p in usable]
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=_session_options(config),
            providers=[name for name, _ in providers],
            provider_options=[options for _, options in providers],
        )
    except Exception as exc:  # onnxruntime raises its own pybind exception types for every kind of bad file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: not a loadable ONNX model: {first_line}") from None


def _safe_name(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in stem).strip("-._") or "model"
    return cleaned[:64]


class SessionRunner:
    """Runs a loaded model on a batch; on GPU providers through IO binding so data is copied once each way.

    With a static input shape the device buffers are allocated once and updated in place, which CUDA graphs
    require. ``io_binding=None`` picks binding exactly when the model runs on a GPU provider.
    """

    def __init__(self, model: LoadedModel, *, io_binding: bool | None = None) -> None:
        self.model = model
        self.use_binding = model.on_gpu if io_binding is None else io_binding
        self._device = "cuda" if model.on_gpu else "cpu"
        self._output_names = [output.name for output in model.session.get_outputs()]
        self._static_input: ort.OrtValue | None = None

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        tensor = np.ascontiguousarray(tensor, dtype=self.model.input_dtype)
        if not self.use_binding:
            outputs = self.model.session.run(self._output_names, {self.model.input_name: tensor})
            return [np.asarray(output) for output in outputs]
        return self._run_bound(tensor)

    def _run_bound(self, tensor: np.ndarray) -> list[np.ndarray]:
        import onnxruntime as ort

        session = self.model.session
        binding = session.io_binding()
        if self.model.static_batch is not None:
            if self._static_input is None or tuple(self._static_input.shape()) != tensor.shape:
                self._static_input = ort.OrtValue.ortvalue_from_numpy(tensor, self._device, self.model.device_id)
            else:
                self._static_input.update_inplace(tensor)
            value = self._static_input
        else:
            value = ort.OrtValue.ortvalue_from_numpy(tensor, self._device, self.model.device_id)
        binding.bind_ortvalue_input(self.model.input_name, value)
        for name in self._output_names:
            binding.bind_output(name, self._device, self.model.device_id)
        session.run_with_iobinding(binding)
        return [np.asarray(output) for output in binding.copy_outputs_to_cpu()]
