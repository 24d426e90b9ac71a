"""``tensor`` variables written from torch come back as ``torch.Tensor`` (issue #12).

Runs only where PyTorch is installed; the origin bookkeeping itself is tested without
torch in tests/test_types.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dspex_rx import SessionContext

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (optional: CI need not install it)"
)


async def test_a_tensor_set_from_torch_comes_back_as_torch(session: SessionContext) -> None:
    given = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    await session.register_variable("w", "tensor", given)
    for value in (await session.get_variable("w"),
                  await session.get_variable("w", bypass_cache=True),
                  (await session.get_variables(["w"]))["w"]):
        assert isinstance(value, torch.Tensor)
        assert torch.equal(value, given) and value.dtype == torch.float32
    as_numpy = await session.get_variable("w", as_tensor="numpy")
    assert type(as_numpy) is np.ndarray and as_numpy.tolist() == given.tolist()


async def test_numpy_stays_numpy_unless_torch_is_asked_for(session: SessionContext) -> None:
    await session.register_variable("e", "tensor", np.ones(3, np.float64))
    assert type(await session.get_variable("e")) is np.ndarray
    asked = await session.get_variable("e", as_tensor="torch")
    assert isinstance(asked, torch.Tensor) and asked.dtype == torch.float64
    assert asked.tolist() == [1.0, 1.0, 1.0]
