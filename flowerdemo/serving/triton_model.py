"""Triton Python-backend model: runs an ONNX model with ONNX Runtime.

This file is not imported by flowerdemo: the repository writer copies it into a model repository
as `<model>/<version>/model.py`, and Triton's Python-backend stub runs it. It needs numpy and
onnxruntime in the stub's environment. The config's `parameters` name the ONNX file and the
thread count, so one template serves any ONNX classifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    entry = config.get("parameters", {}).get(key)
    if not entry:
        return default
    return str(entry.get("string_value", default))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        onnx_path = version_dir / _parameter(config, "onnx_file", "model.onnx")

        options = ort.SessionOptions()
        # Several instances share a few cores: one ONNX Runtime thread pool per instance sized
        # to the machine would oversubscribe it. The stack decides the count.
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device_id = int(args.get("model_instance_device_id", "0"))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)

        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def _run(self, batch: Any) -> Any:
        (result,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.ascontiguousarray(result, dtype=self.output_dtype)

    def execute(self, requests: list[Any]) -> list[Any]:
        # Dynamic batching hands over several requests at once: run them as one ONNX batch.
        arrays = [
            pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            for request in requests
        ]
        try:
            if self.batched:
                batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
                results = np.split(self._run(batch), np.cumsum([a.shape[0] for a in arrays])[:-1])
            else:
                results = [self._run(array) for array in arrays]
        except Exception as error:  # every request must get an answer, even on failure
            message = f"ONNX Runtime failed on a batch of {len(arrays)} requests: {error}"
            return [
                pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
                for _ in requests
            ]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(result))]
            )
            for result in results
        ]

    def finalize(self) -> None:
        self.session = None
