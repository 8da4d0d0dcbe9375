"""Recording stand-ins for the tensorrt and pycuda modules, shaped like TensorRT 8.x's and 10.x's Python
API surfaces, for tests that check what the builder and the runner ask of them on a machine without a
GPU. They build nothing: a "serialized engine" is a marker the tests never run, and every call is
written to `calls` for the test to read.

8.x has NetworkDefinitionCreationFlag.EXPLICIT_BATCH (needed) and IInt8EntropyCalibrator2; 10.x has
neither the need nor, here, the flag, so a builder that still passes it fails on the 10.x fake.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recorder:
    calls: list[tuple] = field(default_factory=list)
    parse_ok: bool = True
    parse_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (node, operator, desc)
    dla_cores: int = 0
    input_shape: tuple[int, ...] = (1, 3, 128, 128)
    execute_ok: bool = True
    set_shape_ok: bool = True

    def __call__(self, *call: Any) -> None:
        self.calls.append(call)

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


def _enum(name: str, *members: str) -> type:
    return type(name, (), {m: f"{name}.{m}" for m in members})


def tensorrt_module(version: str, rec: Recorder) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.BuilderFlag = _enum("BuilderFlag", "FP16", "INT8", "GPU_FALLBACK")
    trt.MemoryPoolType = _enum("MemoryPoolType", "WORKSPACE")
    trt.DeviceType = _enum("DeviceType", "GPU", "DLA")
    trt.TensorIOMode = _enum("TensorIOMode", "INPUT", "OUTPUT")
    if major < 10:
        trt.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), {"EXPLICIT_BATCH": 0})
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {})
    else:
        trt.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), {})

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level):
            rec("Logger", level)

    @dataclass
    class Tensor:
        name: str
        shape: tuple

    class Network:
        num_outputs = 2

        def get_input(self, i):
            return Tensor("images", rec.input_shape)

        def get_output(self, i):
            return Tensor(("boxes", "scores")[i], (rec.input_shape[0], 336, 4 if i == 0 else 10))

        def unmark_output(self, tensor):
            rec("unmark_output", tensor.name)

        def mark_output(self, tensor):
            rec("mark_output", tensor.name)

        def add_plugin_v2(self, inputs, plugin):
            rec("add_plugin_v2", [t.name for t in inputs], plugin)
            outputs = [Tensor(f"plugin_out{i}", ()) for i in range(4)]
            return type("Layer", (), {"get_output": lambda self, i: outputs[i]})()

    class ParserError:
        def __init__(self, node, operator, desc):
            self._node, self._operator, self._desc = node, operator, desc

        def node(self):
            return self._node

        def desc(self):
            return self._desc

    if major >= 10:  # node_operator() came with 10.x
        ParserError.node_operator = lambda self: self._operator

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if rec.parse_ok else len(rec.parse_errors)

        def parse(self, data: bytes) -> bool:
            rec("parse", len(data))
            return rec.parse_ok

        def get_error(self, i):
            return ParserError(*rec.parse_errors[i])

    class TimingCache:
        def serialize(self):
            return b"timing"

    class Profile:
        def set_shape(self, name, low, opt, high):
            rec("profile.set_shape", name, tuple(low), tuple(opt), tuple(high))

    class Config:
        def __setattr__(self, name, value):
            rec("config." + name, value)

        def set_memory_pool_limit(self, pool, size):
            rec("set_memory_pool_limit", pool, size)

        def create_timing_cache(self, data):
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("set_timing_cache", ignore_mismatch)

        def get_timing_cache(self):
            return TimingCache()

        def set_flag(self, flag):
            rec("set_flag", flag)

        def add_optimization_profile(self, profile):
            rec("add_optimization_profile")

    class Builder:
        def __init__(self, logger):
            self.num_DLA_cores = rec.dla_cores

        def create_network(self, flags):
            rec("create_network", flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec("build_serialized_network")
            return b"not an engine: recorded by tests/deploy/fake_tensorrt.py"

    # The runner's side: a runtime, an engine with two outputs, and a context that reports failure by
    # its return value as TensorRT does.
    class Context:
        def set_input_shape(self, name, shape):
            rec("set_input_shape", name, tuple(shape))
            return rec.set_shape_ok

        def get_tensor_shape(self, name):
            return {"images": rec.input_shape, "boxes": (1, 336, 4), "scores": (1, 336, 10)}[name]

        def set_tensor_address(self, name, address):
            rec("set_tensor_address", name)
            return True

        def execute_async_v3(self, stream):
            rec("execute_async_v3", stream)
            return rec.execute_ok

    class Engine:
        num_io_tensors = 3
        names = ("images", "boxes", "scores")

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return Context().get_tensor_shape(name)

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def __setattr__(self, name, value):
            rec("runtime." + name, value)

        def deserialize_cuda_engine(self, data):
            rec("deserialize_cuda_engine")
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    # plugins: the registry, its creators and field collections, as EfficientNMS_TRT is made
    trt.PluginFieldType = _enum("PluginFieldType", "FLOAT32", "INT32")
    trt.PluginField = lambda name, data, kind: (name, data.dtype.name, float(data[0]), kind)
    trt.PluginFieldCollection = list
    trt.init_libnvinfer_plugins = lambda logger, namespace: rec("init_libnvinfer_plugins", namespace)

    class Creator:
        def create_plugin(self, name, fields):
            rec("create_plugin", name, fields)
            return f"plugin:{name}"

    trt.get_plugin_registry = lambda: type("Registry", (), {
        "get_plugin_creator": lambda self, name, version, namespace="": (rec("get_plugin_creator", name, version)
                                                                         or Creator())})()
    trt.nptype = lambda dtype: __import__("numpy").float32
    return trt


def pycuda_modules(rec: Recorder, autoinit_error: Exception | None = None) -> dict[str, types.ModuleType]:
    """pycuda, pycuda.driver, and pycuda.autoinit unless its import is to fail (autoinit_error)."""
    import numpy as np

    driver = types.ModuleType("pycuda.driver")

    class Device:
        def __init__(self, i):
            pass

        def name(self):
            return "Fake GPU"

        def compute_capability(self):
            return (8, 7)

    class Stream:
        handle = 1234

        def synchronize(self):
            pass

    class Event:
        def record(self, stream):
            pass

        def time_till(self, other):
            return 0.5

    driver.Device, driver.Stream, driver.Event = Device, Stream, Event
    driver.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    driver.mem_alloc = lambda nbytes: 4096
    driver.memcpy_htod_async = lambda dst, src, stream: rec("memcpy_htod_async")
    driver.memcpy_dtoh_async = lambda dst, src, stream: rec("memcpy_dtoh_async")
    package = types.ModuleType("pycuda")
    package.__path__ = []  # a package: `import pycuda.autoinit` asks the finders on sys.meta_path
    package.driver = driver
    modules = {"pycuda": package, "pycuda.driver": driver}
    if autoinit_error is None:  # else install() makes importing it raise
        modules["pycuda.autoinit"] = types.ModuleType("pycuda.autoinit")
    return modules


def install(monkeypatch: Any, version: str, rec: Recorder, autoinit_error: Exception | None = None) -> None:
    """Put the fakes where `import tensorrt` and `import pycuda...` find them, for one test."""
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module(version, rec))
    for name, module in pycuda_modules(rec, autoinit_error).items():
        monkeypatch.setitem(sys.modules, name, module)
    if autoinit_error is not None:  # `import pycuda.autoinit` runs a finder that raises, as cuInit's failure does
        monkeypatch.setattr(sys, "meta_path", [_Raising("pycuda.autoinit", autoinit_error), *sys.meta_path])
        monkeypatch.delitem(sys.modules, "pycuda.autoinit", raising=False)


class _Raising:
    def __init__(self, name: str, error: Exception):
        self.name, self.error = name, error

    def find_spec(self, name, path=None, target=None):
        if name == self.name:
            raise self.error
        return None
