"""Device specs: `nvidia-smi -L` output, MIG slices to UUIDs, Docker's --gpus values."""

from __future__ import annotations

import pytest

from flowerdemo.serving.devices import (
    DeviceError,
    MigDevice,
    docker_gpus_value,
    parse_nvidia_smi_list,
    resolve_devices,
)
from flowerdemo.serving.triton import cuda_visible_devices

# The layout nvidia-smi -L prints on a MIG-enabled A100 (UUIDs shortened).
SMI_LIST = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 1g.5gb      Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 1g.5gb      Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-1a2b3c4d-0000-1111-2222-333344445555)
  MIG 3g.20gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
"""


def test_nvidia_smi_list_is_parsed():
    gpus, migs = parse_nvidia_smi_list(SMI_LIST)
    assert gpus == [
        "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77",
        "GPU-1a2b3c4d-0000-1111-2222-333344445555",
    ]
    assert [(m.gpu, m.index) for m in migs] == [(0, 0), (0, 1), (1, 0)]
    assert migs[1].uuid == "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb"


def test_mig_forms_resolve_to_uuids():
    _, migs = parse_nvidia_smi_list(SMI_LIST)
    assert resolve_devices(("mig",), migs) == tuple(m.uuid for m in migs)
    assert resolve_devices(("cpu", "mig:1:0"), migs) == ("cpu", migs[2].uuid)
    with pytest.raises(DeviceError, match="no MIG device 5 on GPU 0"):
        resolve_devices(("mig:0:5",), migs)
    with pytest.raises(DeviceError, match="no MIG devices found"):
        resolve_devices(("mig",), [])
    assert resolve_devices(("cpu", "cuda:1")) == ("cpu", "cuda:1")


def test_bad_device_names():
    for bad in ("gpu", "cuda:x", "mig:0", "tpu:0", ""):
        with pytest.raises(DeviceError, match="expected cpu, cuda:<i>, mig"):
            resolve_devices((bad,), [MigDevice(0, 0, "MIG-x")])


def test_process_and_container_device_values():
    assert cuda_visible_devices("cpu") == ""
    assert cuda_visible_devices("cuda:3") == "3"
    assert cuda_visible_devices("MIG-c6d4f1ef") == "MIG-c6d4f1ef"
    assert docker_gpus_value("cpu", 0) is None
    assert docker_gpus_value("mig:0:2", 0) == '"device=0:2"'
    assert docker_gpus_value("mig", 4) == '"device=0:4"'
    assert docker_gpus_value("cuda:1", 0) == '"device=1"'
    assert docker_gpus_value("MIG-c6d4f1ef", 0) == '"device=MIG-c6d4f1ef"'
