"""The torch-free reader of legacy PyTorch files: exact tensors, and no code execution."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from iraas.model.weights import WeightsError, load_state_dict


def _legacy_save(obj: object, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def test_round_trip_matches_torch(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    sd = {
        "conv.weight": torch.randn(8, 3, 3, 3),
        "view.offset": base[1],  # a view into a shared storage, with an offset
        "view.strided": base[:, 1, ::2],  # non-contiguous
        "half": torch.randn(5).half(),
        "count": torch.tensor(7, dtype=torch.int64),
    }
    path = tmp_path / "w.pth"
    _legacy_save(sd, path)
    got = load_state_dict(path)
    assert set(got) == set(sd)
    for name, tensor in sd.items():
        np.testing.assert_array_equal(got[name], tensor.numpy())
        assert got[name].dtype == tensor.numpy().dtype


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/iraas-pwned",))


def test_tampered_file_referencing_another_global_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/iraas-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for part in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"w": _Evil()}, []):
            pickle.dump(part, f, protocol=2)
    with pytest.raises(WeightsError, match="not allowed"):
        load_state_dict(path)
    assert not marker.exists()


def test_real_file_with_a_global_swapped_in_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    _legacy_save({"w": torch.ones(2)}, path)
    data = path.read_bytes()
    # Same length, so the file stays well-formed: only the global changes.
    tampered = data.replace(b"collections\nOrderedDict", b"subprocess\nOrderedDic_", 1)
    assert tampered != data
    path.write_bytes(tampered)
    with pytest.raises(WeightsError, match="subprocess"):
        load_state_dict(path)


@pytest.mark.parametrize("cut", [10, 200, -100])
def test_truncated_or_garbage_files_are_clear_errors(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "w.pth"
    _legacy_save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(WeightsError):
        load_state_dict(path)


def test_zip_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(WeightsError, match="zip"):
        load_state_dict(path)


def test_a_hostile_file_cannot_change_how_later_files_load(tmp_path: Path) -> None:
    # GLOBAL torch.FloatStorage, then BUILD {"dtype": "garbage"} on whatever that returned,
    # hand-assembled: no pickler would write it.
    hostile = b"ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x07\x00\x00\x00garbagesb."
    evil, good = tmp_path / "evil.pth", tmp_path / "good.pth"
    with open(evil, "wb") as f:
        for part in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(part, f, protocol=2)
        f.write(hostile)
    _legacy_save({"w": torch.ones(3)}, good)
    with pytest.raises(WeightsError):
        load_state_dict(evil)
    np.testing.assert_array_equal(load_state_dict(good)["w"], np.ones(3, dtype=np.float32))
