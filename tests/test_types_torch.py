"""``tensor`` variables written from torch come back as ``torch.Tensor`` (issue #12).

Runs only where PyTorch is installed; the origin bookkeeping itself is tested without
torch in tests/test_types.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dspex_rx import SessionContext

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (make test installs it: the [torch] extra)"
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


async def test_watchers_see_torch_tensors_for_a_variable_written_from_torch(
    session: SessionContext,
) -> None:
    await session.register_variable("w", "tensor", torch.zeros(2, 3))
    async with session.watch_variable("w", include_initial=False) as watch:
        # A transposed view is not contiguous: it must still travel element for element.
        written = torch.arange(6, dtype=torch.float64).reshape(3, 2).t()
        await session.set_variable("w", written)
        update = await watch.__anext__()
    assert isinstance(update.value, torch.Tensor) and torch.equal(update.value, written)
    assert isinstance(update.old_value, torch.Tensor)
    assert update.old_value.tolist() == [[0.0] * 3] * 2


async def test_a_numpy_variable_set_from_torch_comes_back_as_torch(
    session: SessionContext,
) -> None:
    await session.register_variable("n", "tensor", np.ones(2))
    await session.set_variable("n", torch.full((2,), 3.0, dtype=torch.float64))
    value = await session.get_variable("n", bypass_cache=True)
    assert isinstance(value, torch.Tensor) and value.tolist() == [3.0, 3.0]


async def test_a_torch_dtype_numpy_lacks_is_refused_naming_the_variable_and_fix(
    session: SessionContext,
) -> None:
    with pytest.raises(TypeError, match=r"variable 'b'.*bfloat16.*tensor\.float\(\)"):
        await session.register_variable("b", "tensor", torch.ones(3, dtype=torch.bfloat16))
    assert "b" not in {v["name"] for v in await session.list_variables()}
