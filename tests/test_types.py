"""Every variable type round-trips exactly through a real server and every constraint is enforced.

Each test talks to the real gRPC server through the ``session`` fixture. It proves that:

- values of all ten types come back with the same Python type and value, and arrays with
  the same dtype, shape and contents (0-d, empty, n-d, non-contiguous, big-endian inputs);
- every constraint is accepted at its boundary and refused beyond it, with the precise
  exception class (``InvalidValueError`` is a ``ValueError``, ``VariableTypeError`` a
  ``TypeError``) and a message naming the variable and the rule;
- registration refuses unknown constraint keys, bad constraint values, unknown types,
  initial values that break the constraints, and names that already exist;
- a refused write leaves the stored value and version exactly as they were;
- ``set_variable(create_if_missing=True)`` infers the type of plain values and asks for a
  ``type_hint`` for arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from helpers import TensorDouble

from dspex_rx import (
    AlreadyExistsError,
    InvalidValueError,
    SessionContext,
    VariableTypeError,
)
from dspex_rx.wire import codec

NAN = float("nan")
INF = float("inf")


# ------------------------------------------------------------------------ helpers


def assert_same(actual: Any, expected: Any, path: str = "value") -> None:
    """Strict equality: same Python type at every level (1, 1.0 and True differ), arrays
    with identical dtype, shape and contents, NaN equal to NaN, and the sign of zero kept."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{path}: expected ndarray, got {type(actual)}"
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: shape {actual.shape} != {expected.shape}"
        equal_nan = expected.dtype.kind in "fc"
        assert np.array_equal(actual, expected, equal_nan=equal_nan), f"{path}: values differ"
        return
    assert type(actual) is type(expected), (
        f"{path}: expected {type(expected).__name__}, got {type(actual).__name__} {actual!r}"
    )
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{path}: keys {set(actual)} != {set(expected)}"
        for key, item in expected.items():
            assert_same(actual[key], item, f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_same(got, want, f"{path}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), f"{path}: expected NaN, got {actual!r}"
    elif isinstance(expected, float):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        assert math.copysign(1.0, actual) == math.copysign(1.0, expected), f"{path}: sign"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


async def snapshot(session: SessionContext, name: str) -> tuple[Any, int, dict[str, Any]]:
    """(value, version, description) of a variable, read with ``include_metadata=True``
    (system fields such as ``type`` are keys of the description)."""
    entry = (await session.get_variables([name], include_metadata=True))[name]
    return entry["value"], entry["version"], entry


async def assert_missing(session: SessionContext, name: str) -> None:
    sentinel = object()
    assert await session.get_variable(name, default=sentinel) is sentinel
    with pytest.raises(KeyError, match=f"no variable '{name}'"):
        await session.get_variable(name)


def arange(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A deterministic array of the given shape and dtype with distinct-ish values."""
    count = math.prod(shape)
    if dtype == "bool":
        return (np.arange(count) % 2 == 0).reshape(shape)
    values = np.arange(count) - count // 2  # negatives too, where the dtype has them
    if np.dtype(dtype).kind == "u":
        values = np.arange(count)
    if np.dtype(dtype).kind in "fc":
        values = values * 0.25
    if np.dtype(dtype).kind == "c":
        values = values + 1j * values[::-1]
    return values.astype(dtype).reshape(shape)


VEC3 = np.array([0.25, -1.5, 3.0], dtype=np.float64)
VEC3_F32 = np.array([0.25, -1.5, 3.0], dtype=np.float32)


# ------------------------------------------------------------ exact round trips


PLAIN_ROUND_TRIPS = [
    pytest.param("float", 0.7, id="float"),
    pytest.param("float", 0.1, id="float-0.1"),
    pytest.param("float", 0.0, id="float-zero"),
    pytest.param("float", -0.0, id="float-negative-zero"),
    pytest.param("float", 5e-324, id="float-subnormal"),
    pytest.param("float", 1.7976931348623157e308, id="float-max"),
    pytest.param("float", -123456.789e-30, id="float-negative"),
    pytest.param("integer", 0, id="integer-zero"),
    pytest.param("integer", -1, id="integer-negative"),
    pytest.param("integer", 42, id="integer"),
    pytest.param("integer", -(2**63), id="integer-int64-min"),
    pytest.param("integer", 2**63 - 1, id="integer-int64-max"),
    pytest.param("string", "héllo wörld 🚀 日本語", id="string-unicode"),
    pytest.param("string", "", id="string-empty"),
    pytest.param("string", "a\x00b\n\t\"'\\", id="string-control-chars"),
    pytest.param("string", "é" * 10_000, id="string-long"),
    pytest.param("boolean", True, id="boolean-true"),
    pytest.param("boolean", False, id="boolean-false"),
    pytest.param("module", "ChainOfThought", id="module"),
    pytest.param("list", [], id="list-empty"),
    pytest.param("list", [1, 1.0, True, "1", None, [], {}], id="list-mixed-kinds"),
    pytest.param("list", [[1, [2, [3, [4]]]], {"k": [{"deep": None}]}], id="list-nested"),
    pytest.param("dict", {}, id="dict-empty"),
    pytest.param(
        "dict",
        {
            "model": {"name": "gpt", "params": {"temperature": 0.7, "top_k": 40}},
            "layers": [{"units": 128, "dropout": 0.1}, {"units": 64, "bias": False}],
            "none": None,
            "flags": [True, False, True],
            "ключ": {"日本": "語", "": "empty key", "🚀": [1, -2, 3.5]},
            "level1": {"level2": {"level3": {"level4": {"level5": [2**63 - 1, -(2**63)]}}}},
            "zero": 0,
            "neg_zero": -0.0,
            "empty": {"list": [], "dict": {}, "str": ""},
        },
        id="dict-nested",
    ),
]


@pytest.mark.parametrize(("type_name", "value"), PLAIN_ROUND_TRIPS)
async def test_plain_value_round_trips_on_register_and_set(
    session: SessionContext, type_name: str, value: Any
) -> None:
    await session.register_variable("registered", type_name, value)
    assert_same(await session.get_variable("registered"), value)

    # The same value written over a different one comes back exactly, too.
    seed = {"float": 1.5, "integer": 7, "string": "seed", "boolean": not value,
            "module": "Seed", "list": ["seed"], "dict": {"seed": 1}}[type_name]
    await session.register_variable("written", type_name, seed)
    assert await session.set_variable("written", value) == 2
    got, version, info = await snapshot(session, "written")
    assert_same(got, value)
    assert version == 2
    assert info["type"] == type_name


async def test_choice_round_trips_every_choice(session: SessionContext) -> None:
    choices = ["gpt-4", "claude-3", "日本語-model", ""]
    await session.register_variable("model", "choice", "gpt-4", constraints={"choices": choices})
    for version, choice in enumerate(choices[1:], start=2):
        assert await session.set_variable("model", choice) == version
        assert_same(await session.get_variable("model"), choice)
    _, _, info = await snapshot(session, "model")
    assert info["type"] == "choice"
    assert info["constraints"] == {"choices": choices}


async def test_int_written_to_float_comes_back_as_float(session: SessionContext) -> None:
    await session.register_variable("temperature", "float", 1)
    assert_same(await session.get_variable("temperature"), 1.0)
    await session.set_variable("temperature", -3)
    assert_same(await session.get_variable("temperature"), -3.0)
    await session.set_variable("temperature", 2**53 + 1)
    assert_same(await session.get_variable("temperature"), float(2**53 + 1))


@pytest.mark.parametrize(
    ("type_name", "scalar", "expected"),
    [
        pytest.param("integer", np.int32(5), 5, id="int32"),
        pytest.param("integer", np.int64(-(2**63)), -(2**63), id="int64-min"),
        pytest.param("integer", np.uint8(255), 255, id="uint8"),
        pytest.param("float", np.float32(0.5), 0.5, id="float32"),
        pytest.param("float", np.float64(0.1), 0.1, id="float64"),
        pytest.param("float", np.int16(-7), -7.0, id="int16-into-float"),
        pytest.param("boolean", np.bool_(True), True, id="bool_-true"),
        pytest.param("boolean", np.bool_(False), False, id="bool_-false"),
    ],
)
async def test_numpy_scalars_accepted_and_returned_as_python_types(
    session: SessionContext, type_name: str, scalar: Any, expected: Any
) -> None:
    await session.register_variable("scalar", type_name, scalar)
    assert_same(await session.get_variable("scalar"), expected)
    await session.register_variable("scalar_set", type_name, expected)
    await session.set_variable("scalar_set", scalar)
    assert_same(await session.get_variable("scalar_set"), expected)


async def test_numpy_scalars_nested_in_dict_become_python_types(session: SessionContext) -> None:
    await session.register_variable(
        "cfg", "dict", {"n": np.int32(3), "x": np.float32(0.25), "ok": np.bool_(False)}
    )
    assert_same(await session.get_variable("cfg"), {"n": 3, "x": 0.25, "ok": False})


async def test_tuples_travel_as_lists(session: SessionContext) -> None:
    await session.register_variable("pair", "list", (1, "a", (2.5, None)))
    assert_same(await session.get_variable("pair"), [1, "a", [2.5, None]])
    await session.register_variable("cfg", "dict", {"shape": (3, 4)})
    assert_same(await session.get_variable("cfg"), {"shape": [3, 4]})


ARRAY_DTYPES = ["float32", "float64", "float16", "int8", "int64", "uint16", "bool", "complex64"]
ARRAY_SHAPES = [(), (5,), (2, 3), (2, 3, 4), (0, 3)]


@pytest.mark.parametrize("shape", ARRAY_SHAPES, ids=lambda s: "x".join(map(str, s)) or "0d")
@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
async def test_tensor_round_trips_dtype_shape_and_values(
    session: SessionContext, dtype: str, shape: tuple[int, ...]
) -> None:
    array = arange(shape, dtype)
    await session.register_variable("weights", "tensor", array)
    got = await session.get_variable("weights")
    assert_same(got, array)
    assert got.dtype.name == dtype

    replacement = arange(shape, dtype)[::-1] if shape else arange(shape, dtype)
    assert await session.set_variable("weights", replacement) == 2
    value, version, info = await snapshot(session, "weights")
    assert_same(value, replacement)
    assert version == 2
    assert info["type"] == "tensor"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
async def test_embedding_round_trips_with_its_dtype(session: SessionContext, dtype: str) -> None:
    vector = np.linspace(-1.0, 1.0, 768).astype(dtype)
    await session.register_variable("context_embedding", "embedding", vector,
                                    constraints={"dimensions": 768})
    assert_same(await session.get_variable("context_embedding"), vector)


async def test_embedding_from_a_list_of_floats_is_float64(session: SessionContext) -> None:
    await session.register_variable("emb", "embedding", [0.5, -0.25, 1])
    assert_same(await session.get_variable("emb"), np.array([0.5, -0.25, 1.0]))


async def test_tensor_from_nested_lists(session: SessionContext) -> None:
    await session.register_variable("ints", "tensor", [[1, 2], [3, 4]])
    assert_same(await session.get_variable("ints"), np.array([[1, 2], [3, 4]], dtype=np.int64))
    await session.register_variable(
        "floats", "tensor", [[1, 2], [3, 4]], constraints={"dtype": "float32"}
    )
    assert_same(
        await session.get_variable("floats"), np.array([[1, 2], [3, 4]], dtype=np.float32)
    )


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2], id="strided-slice"),
        pytest.param(np.asfortranarray(np.arange(6.0).reshape(2, 3)), id="fortran-order"),
        pytest.param(np.arange(6.0).reshape(2, 3).T, id="transposed"),
    ],
)
async def test_non_contiguous_arrays_round_trip_by_value(
    session: SessionContext, array: np.ndarray
) -> None:
    await session.register_variable("view", "tensor", array)
    assert_same(await session.get_variable("view"), np.ascontiguousarray(array))


@pytest.mark.parametrize("dtype", [">i4", ">f8", ">c16"])
async def test_big_endian_arrays_round_trip_as_native_with_same_values(
    session: SessionContext, dtype: str
) -> None:
    array = np.array([[1, -2], [3, 400_000]], dtype=dtype)
    await session.register_variable("be", "tensor", array)
    got = await session.get_variable("be")
    native = array.astype(array.dtype.newbyteorder("="))
    assert_same(got, native)
    assert got.dtype.name == array.dtype.name


async def test_returned_arrays_are_read_only(session: SessionContext) -> None:
    await session.register_variable("frozen", "tensor", np.zeros(3, dtype=np.float32))
    got = await session.get_variable("frozen")
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 1.0


@pytest.mark.parametrize(
    ("constraints", "value"),
    [
        pytest.param({"allow_nan": True}, NAN, id="nan"),
        pytest.param({"allow_inf": True}, INF, id="inf"),
        pytest.param({"allow_inf": True}, -INF, id="minus-inf"),
        pytest.param({"allow_nan": True, "allow_inf": True}, NAN, id="both-nan"),
    ],
)
async def test_float_nan_and_inf_allowed_by_constraint(
    session: SessionContext, constraints: dict[str, Any], value: float
) -> None:
    await session.register_variable("loss", "float", 0.5, constraints=constraints)
    assert await session.set_variable("loss", value) == 2
    assert_same(await session.get_variable("loss"), value)


async def test_tensor_nan_and_inf_allowed_by_constraint(session: SessionContext) -> None:
    array = np.array([1.0, NAN, INF, -INF], dtype=np.float32)
    await session.register_variable(
        "grads", "tensor", array, constraints={"allow_nan": True, "allow_inf": True}
    )
    assert_same(await session.get_variable("grads"), array)


async def test_embedding_normalize_stores_a_unit_vector_in_its_dtype(
    session: SessionContext,
) -> None:
    vector = np.array([3.0, 4.0, 0.0, -12.0], dtype=np.float32)
    await session.register_variable(
        "query_vec", "embedding", vector, constraints={"normalize": True, "dimensions": 4}
    )
    got = await session.get_variable("query_vec")
    assert got.dtype == np.float32
    assert got.shape == (4,)
    assert np.linalg.norm(got.astype(np.float64)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(got, vector / 13.0, rtol=1e-6)

    await session.set_variable("query_vec", np.array([0.0, 0.0, 2.0, 0.0], dtype=np.float32))
    assert_same(
        await session.get_variable("query_vec"), np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)
    )


async def test_constraints_are_stored_and_returned_in_clean_form(session: SessionContext) -> None:
    await session.register_variable(
        "batch", "tensor", np.zeros((4, 3)), constraints={"shape": [-1, 3], "dtype": "float64"}
    )
    _, _, info = await snapshot(session, "batch")
    assert info["constraints"] == {"shape": [None, 3], "dtype": "float64"}


# ------------------------------------------------------------ accepted writes


ACCEPTED_WRITES = [
    pytest.param("float", {"min": 0.0, "max": 2.0}, 0.7, 2.0, 2.0, id="float-at-max"),
    pytest.param("float", {"min": 0.0, "max": 2.0}, 0.7, 0.0, 0.0, id="float-at-min"),
    pytest.param("float", {"min": 0, "max": 2}, 0.7, 1, 1.0, id="float-int-bounds-int-value"),
    pytest.param("integer", {"min": 1, "max": 10}, 5, 10, 10, id="integer-at-max"),
    pytest.param("integer", {"min": 1, "max": 10}, 5, 1, 1, id="integer-at-min"),
    pytest.param("integer", {"min": -(2**63), "max": 2**63 - 1}, 0, 2**63 - 1, 2**63 - 1,
                 id="integer-int64-bounds"),
    pytest.param("string", {"min_length": 2, "max_length": 5}, "abc", "ab", "ab",
                 id="string-at-min-length"),
    pytest.param("string", {"min_length": 2, "max_length": 5}, "abc", "日本語🚀é", "日本語🚀é",
                 id="string-max-length-counts-characters"),
    pytest.param("string", {"pattern": r"[a-z]+-\d+"}, "gpt-4", "claude-3", "claude-3",
                 id="string-pattern"),
    pytest.param("choice", {"choices": ["a", "b"]}, "a", "b", "b", id="choice"),
    pytest.param("module", {"choices": ["Predict", "ChainOfThought"]}, "Predict",
                 "ChainOfThought", "ChainOfThought", id="module-choices"),
    pytest.param("module", {}, "Predict", "MyCustomModule", "MyCustomModule",
                 id="module-without-choices"),
    pytest.param("embedding", {"dimensions": 3}, VEC3, VEC3 * 2, VEC3 * 2,
                 id="embedding-dimensions"),
    pytest.param("embedding", {"dtype": "float32"}, VEC3_F32,
                 np.array([1, -2, 3], dtype=np.int8), np.array([1, -2, 3], dtype=np.float32),
                 id="embedding-dtype-safe-cast-int8"),
    pytest.param("embedding", {"dtype": "float64"}, VEC3, VEC3_F32, VEC3,
                 id="embedding-dtype-safe-cast-float32"),
    pytest.param("tensor", {"shape": [2, None]}, np.zeros((2, 3)), np.ones((2, 7)),
                 np.ones((2, 7)), id="tensor-shape-wildcard-none"),
    pytest.param("tensor", {"shape": [-1, 3]}, np.zeros((2, 3)), np.ones((9, 3)),
                 np.ones((9, 3)), id="tensor-shape-wildcard-minus-one"),
    pytest.param("tensor", {"shape": [0, 3]}, np.zeros((0, 3)), np.ones((0, 3)),
                 np.ones((0, 3)), id="tensor-shape-empty"),
    pytest.param("tensor", {"shape": []}, np.array(1.0), np.array(2.5), np.array(2.5),
                 id="tensor-shape-0d"),
    pytest.param("tensor", {"dtype": "float32"}, np.zeros(3, dtype=np.float32),
                 np.array([1, -2, 127], dtype=np.int8), np.array([1, -2, 127], dtype=np.float32),
                 id="tensor-dtype-safe-cast-int8-to-float32"),
    pytest.param("tensor", {"dtype": "int16"}, np.zeros(2, dtype=np.int16),
                 np.array([True, False]), np.array([1, 0], dtype=np.int16),
                 id="tensor-dtype-safe-cast-bool-to-int16"),
    pytest.param("list", {"max_length": 3, "min_length": 1}, [1], [1, 2, 3], [1, 2, 3],
                 id="list-at-max-length"),
    pytest.param("list", {"item_type": "float"}, [0.5], [1, 2.5], [1.0, 2.5],
                 id="list-item-type-float-converts-ints"),
    pytest.param("list", {"item_type": "string"}, ["a"], ["x", "日本"], ["x", "日本"],
                 id="list-item-type-string"),
    pytest.param("list", {"item_type": "dict"}, [{}], [{"a": [1]}, {}], [{"a": [1]}, {}],
                 id="list-item-type-dict"),
    pytest.param("list", {"item_type": "boolean"}, [True], [False, True], [False, True],
                 id="list-item-type-boolean"),
]


@pytest.mark.parametrize(
    ("type_name", "constraints", "initial", "value", "expected"), ACCEPTED_WRITES
)
async def test_constraint_accepts_value_within_it(
    session: SessionContext,
    type_name: str,
    constraints: dict[str, Any],
    initial: Any,
    value: Any,
    expected: Any,
) -> None:
    await session.register_variable("accepted", type_name, initial, constraints=constraints)
    assert await session.set_variable("accepted", value) == 2
    got, version, _ = await snapshot(session, "accepted")
    assert_same(got, expected)
    assert version == 2
    # The same value is also a valid initial value.
    await session.register_variable("accepted_initial", type_name, value, constraints=constraints)
    assert_same(await session.get_variable("accepted_initial"), expected)


# ------------------------------------------------------------- refused values


REFUSED_VALUES = [
    # float
    pytest.param("float", {"min": 0.0, "max": 2.0}, 0.7, 2.5, InvalidValueError,
                 r"2\.5 is above max 2\.0", id="float-above-max"),
    pytest.param("float", {"min": 0.0, "max": 2.0}, 0.7, -0.1, InvalidValueError,
                 r"-0\.1 is below min 0\.0", id="float-below-min"),
    pytest.param("float", {"max": 2.0}, 0.7, 3, InvalidValueError,
                 r"3\.0 is above max 2\.0", id="float-int-above-max"),
    pytest.param("float", {}, 0.7, NAN, InvalidValueError,
                 r"NaN is not allowed \(constraint allow_nan\)", id="float-nan"),
    pytest.param("float", {}, 0.7, INF, InvalidValueError,
                 r"infinity is not allowed \(constraint allow_inf\)", id="float-inf"),
    pytest.param("float", {}, 0.7, -INF, InvalidValueError,
                 "infinity is not allowed", id="float-minus-inf"),
    pytest.param("float", {"allow_nan": True}, 0.7, INF, InvalidValueError,
                 "infinity is not allowed", id="float-allow-nan-still-refuses-inf"),
    pytest.param("float", {"allow_inf": True}, 0.7, NAN, InvalidValueError,
                 "NaN is not allowed", id="float-allow-inf-still-refuses-nan"),
    pytest.param("float", {}, 0.7, "0.7", VariableTypeError,
                 "expected float, got str", id="float-string"),
    pytest.param("float", {}, 0.7, True, VariableTypeError,
                 "expected float, got bool", id="float-bool"),
    pytest.param("float", {}, 0.7, None, VariableTypeError,
                 "expected float, got NoneType", id="float-none"),
    # integer
    pytest.param("integer", {"min": 1, "max": 10}, 5, 11, InvalidValueError,
                 "11 is above max 10", id="integer-above-max"),
    pytest.param("integer", {"min": 1, "max": 10}, 5, 0, InvalidValueError,
                 "0 is below min 1", id="integer-below-min"),
    pytest.param("integer", {}, 5, True, VariableTypeError,
                 "expected integer, got bool", id="integer-bool"),
    pytest.param("integer", {}, 5, 3.0, VariableTypeError,
                 r"expected integer, got float 3\.0", id="integer-float"),
    pytest.param("integer", {}, 5, "5", VariableTypeError,
                 "expected integer, got str", id="integer-string"),
    pytest.param("integer", {}, 5, 2**63, InvalidValueError,
                 "9223372036854775808 is outside the int64 range", id="integer-2**63"),
    pytest.param("integer", {}, 5, -(2**63) - 1, InvalidValueError,
                 "-9223372036854775809 is outside the int64 range", id="integer-below-int64"),
    pytest.param("integer", {}, 5, np.uint64(2**64 - 1), InvalidValueError,
                 "outside the int64 range", id="integer-uint64-max"),
    # string
    pytest.param("string", {"min_length": 2, "max_length": 5}, "abc", "a", InvalidValueError,
                 "string length 1 is below min_length 2", id="string-below-min-length"),
    pytest.param("string", {"min_length": 2, "max_length": 5}, "abc", "abcdef",
                 InvalidValueError, "string length 6 is above max_length 5",
                 id="string-above-max-length"),
    pytest.param("string", {"pattern": "[a-z]+"}, "abc", "abc1", InvalidValueError,
                 r"'abc1' does not match pattern '\[a-z\]\+'", id="string-pattern"),
    pytest.param("string", {"pattern": "b"}, "b", "abc", InvalidValueError,
                 "'abc' does not match pattern 'b'", id="string-pattern-is-a-full-match"),
    pytest.param("string", {"pattern": "[a-z]+"}, "abc", "abc\n", InvalidValueError,
                 "does not match pattern", id="string-pattern-no-trailing-newline"),
    pytest.param("string", {}, "x", 5, VariableTypeError,
                 "expected string, got int", id="string-int"),
    # boolean
    pytest.param("boolean", {}, True, 1, VariableTypeError,
                 "expected boolean, got int", id="boolean-int"),
    pytest.param("boolean", {}, True, "true", VariableTypeError,
                 "expected boolean, got str", id="boolean-string"),
    # choice
    pytest.param("choice", {"choices": ["a", "b"]}, "a", "c", InvalidValueError,
                 r"'c' is not one of the choices \['a', 'b'\]", id="choice-not-a-choice"),
    pytest.param("choice", {"choices": ["a", "b"]}, "a", "A", InvalidValueError,
                 "is not one of the choices", id="choice-case-sensitive"),
    pytest.param("choice", {"choices": ["1", "2"]}, "1", 1, VariableTypeError,
                 r"expected string \(one of the choices\), got int", id="choice-int"),
    # module
    pytest.param("module", {"choices": ["Predict", "ChainOfThought"]}, "Predict", "ReAct",
                 InvalidValueError, "'ReAct' is not one of the choices", id="module-choices"),
    pytest.param("module", {}, "Predict", "", InvalidValueError,
                 "module name must not be empty", id="module-empty"),
    pytest.param("module", {}, "Predict", None, VariableTypeError,
                 "got NoneType", id="module-none"),
    # embedding
    pytest.param("embedding", {"dimensions": 3}, VEC3, np.zeros(4), InvalidValueError,
                 "embedding has 4 dimensions, constraint dimensions is 3",
                 id="embedding-wrong-dimensions"),
    pytest.param("embedding", {}, VEC3, np.zeros((2, 3)), InvalidValueError,
                 r"an embedding must be 1-d, got shape \(2, 3\)", id="embedding-2d"),
    pytest.param("embedding", {}, VEC3, np.array(1.0), InvalidValueError,
                 r"an embedding must be 1-d, got shape \(\)", id="embedding-0d"),
    pytest.param("embedding", {}, VEC3, np.array([1, 2, 3]), VariableTypeError,
                 "an embedding needs a floating dtype, got int64", id="embedding-int-array"),
    pytest.param("embedding", {}, VEC3, np.array([1 + 1j]), VariableTypeError,
                 "needs a floating dtype, got complex128", id="embedding-complex"),
    pytest.param("embedding", {"dtype": "float32"}, VEC3_F32, VEC3, VariableTypeError,
                 "dtype float64 cannot be converted to the required dtype float32",
                 id="embedding-dtype-unsafe-cast"),
    pytest.param("embedding", {"normalize": True}, VEC3, np.zeros(3), InvalidValueError,
                 r"cannot normalize a vector of norm 0\.0 \(constraint normalize\)",
                 id="embedding-normalize-zero"),
    pytest.param("embedding", {}, VEC3, np.array([0.5, NAN, 1.0]), InvalidValueError,
                 "NaN is not allowed", id="embedding-nan"),
    pytest.param("embedding", {}, VEC3, np.array([0.5, INF, 1.0]), InvalidValueError,
                 "infinity is not allowed", id="embedding-inf"),
    pytest.param("embedding", {}, VEC3, "0.5,1.0", VariableTypeError,
                 r"expected embedding \(numpy array or list of numbers\), got str",
                 id="embedding-string"),
    # tensor
    pytest.param("tensor", {"shape": [2, None]}, np.zeros((2, 3)), np.zeros((3, 3)),
                 InvalidValueError,
                 r"tensor shape \(3, 3\) does not match constraint shape \(2, '\*'\)",
                 id="tensor-shape-wildcard-refuses-fixed-dim"),
    pytest.param("tensor", {"shape": [-1, 3]}, np.zeros((2, 3)), np.zeros(3),
                 InvalidValueError, r"tensor shape \(3,\) does not match constraint shape",
                 id="tensor-shape-wrong-ndim"),
    pytest.param("tensor", {"shape": [2, 3]}, np.zeros((2, 3)), np.zeros((2, 3, 1)),
                 InvalidValueError, r"tensor shape \(2, 3, 1\) does not match",
                 id="tensor-shape-extra-dim"),
    pytest.param("tensor", {"dtype": "int8"}, np.zeros(2, dtype=np.int8),
                 np.array([1.0, 2.0]), VariableTypeError,
                 "dtype float64 cannot be converted to the required dtype int8 without loss",
                 id="tensor-dtype-unsafe-float64-to-int8"),
    pytest.param("tensor", {"dtype": "float32"}, np.zeros(2, dtype=np.float32),
                 np.array([1, 2], dtype=np.int64), VariableTypeError,
                 "dtype int64 cannot be converted to the required dtype float32",
                 id="tensor-dtype-unsafe-int64-to-float32"),
    pytest.param("tensor", {}, np.zeros(2), np.array([1, "a"], dtype=object),
                 VariableTypeError, "dtype object", id="tensor-object-dtype"),
    pytest.param("tensor", {}, np.zeros(2), np.array(["a", "b"]),
                 VariableTypeError, "dtype <U1", id="tensor-str-dtype"),
    pytest.param("tensor", {}, np.zeros(2), [[1, 2], [3]], VariableTypeError,
                 "cannot make a tensor from that list", id="tensor-ragged-list"),
    pytest.param("tensor", {}, np.zeros(2), np.array([1.0, NAN]), InvalidValueError,
                 "NaN is not allowed", id="tensor-nan"),
    pytest.param("tensor", {"allow_nan": True}, np.zeros(2), np.array([1.0, -INF]),
                 InvalidValueError, "infinity is not allowed", id="tensor-inf"),
    pytest.param("tensor", {}, np.zeros(2), {"a": 1}, VariableTypeError,
                 "expected tensor", id="tensor-dict"),
    # list
    pytest.param("list", {"max_length": 3}, [1], [1, 2, 3, 4], InvalidValueError,
                 "list length 4 is above max_length 3", id="list-above-max-length"),
    pytest.param("list", {"min_length": 1}, [1], [], InvalidValueError,
                 "list length 0 is below min_length 1", id="list-below-min-length"),
    pytest.param("list", {"item_type": "integer"}, [1], [1, "2"], VariableTypeError,
                 "item 1 breaks item_type integer: expected integer, got str",
                 id="list-item-type-integer"),
    pytest.param("list", {"item_type": "integer"}, [1], [1, True], VariableTypeError,
                 "item 1 breaks item_type integer: expected integer, got bool",
                 id="list-item-type-integer-bool"),
    pytest.param("list", {"item_type": "string"}, ["a"], ["a", 2], VariableTypeError,
                 "item 1 breaks item_type string", id="list-item-type-string"),
    pytest.param("list", {"item_type": "float"}, [0.5], [0.5, NAN], InvalidValueError,
                 "item 1 breaks item_type float: NaN is not allowed", id="list-item-type-nan"),
    pytest.param("list", {}, [1], [1.0, INF], InvalidValueError,
                 r"item 1 must be finite, got inf", id="list-inf"),
    pytest.param("list", {}, [1], {"a": 1}, VariableTypeError,
                 "expected list, got dict", id="list-dict"),
    pytest.param("list", {}, [1], [np.zeros(2)], VariableTypeError,
                 "item 0 holds ndarray", id="list-holding-array"),
    # dict
    pytest.param("dict", {}, {"a": 1}, {1: "a", "1": "b"}, InvalidValueError,
                 "dict keys collide when converted to strings: 1 and '1' become the same "
                 "key '1'", id="dict-int-key-collides"),
    pytest.param("dict", {}, {"a": 1}, {"a": {("t",): 1}}, VariableTypeError,
                 "dict keys must be strings, got tuple", id="dict-nested-tuple-key"),
    pytest.param("dict", {}, {"a": 1}, {"a": {"b": INF}}, InvalidValueError,
                 r"value\['a'\]\['b'\] must be finite, got inf", id="dict-nested-inf"),
    pytest.param("dict", {}, {"a": 1}, {"a": [NAN]}, InvalidValueError,
                 "must be finite, got nan", id="dict-nested-nan"),
    pytest.param("dict", {}, {"a": 1}, {"a": 2**63}, InvalidValueError,
                 "outside the int64 range", id="dict-nested-big-int"),
    pytest.param("dict", {}, {"a": 1}, {"a": np.zeros(2)}, VariableTypeError,
                 r"value\['a'\] holds ndarray", id="dict-holding-array"),
    pytest.param("dict", {}, {"a": 1}, ["a"], VariableTypeError,
                 "expected dict, got list", id="dict-list"),
    pytest.param("dict", {}, {"a": 1}, {"a": object()}, VariableTypeError,
                 "cannot send a value of type object", id="dict-unsendable-object"),
]


@pytest.mark.parametrize(
    ("type_name", "constraints", "initial", "bad", "error", "rule"), REFUSED_VALUES
)
async def test_refused_write_names_variable_and_rule_and_changes_nothing(
    session: SessionContext,
    type_name: str,
    constraints: dict[str, Any],
    initial: Any,
    bad: Any,
    error: type[Exception],
    rule: str,
) -> None:
    await session.register_variable("guarded", type_name, initial, constraints=constraints)
    await session.set_variable("guarded", initial)  # version 2, so "unchanged" means 2
    before, version_before, info_before = await snapshot(session, "guarded")
    assert version_before == 2

    with pytest.raises(error, match=rule) as info:
        await session.set_variable("guarded", bad)
    assert type(info.value) is error
    assert str(info.value).startswith("variable 'guarded': "), str(info.value)

    after, version_after, info_after = await snapshot(session, "guarded")
    assert version_after == version_before
    assert info_after["revision"] == info_before["revision"]
    assert info_after["updated_at"] == info_before["updated_at"]
    assert_same(after, before)


@pytest.mark.parametrize(
    ("type_name", "constraints", "initial", "bad", "error", "rule"), REFUSED_VALUES
)
async def test_refused_initial_value_registers_nothing(
    session: SessionContext,
    type_name: str,
    constraints: dict[str, Any],
    initial: Any,
    bad: Any,
    error: type[Exception],
    rule: str,
) -> None:
    await session.register_variable("witness", "integer", 0)
    _, _, witness_before = await snapshot(session, "witness")
    with pytest.raises(error, match=rule) as info:
        await session.register_variable("born_bad", type_name, bad, constraints=constraints)
    assert type(info.value) is error
    assert str(info.value).startswith("variable 'born_bad': "), str(info.value)
    await assert_missing(session, "born_bad")
    # No revision was consumed by the refused registration.
    _, _, witness_after = await snapshot(session, "witness")
    assert witness_after["session_revision"] == witness_before["session_revision"]


def test_every_type_has_refusal_cases() -> None:
    # Guards the tables above: no type silently drops out of the refusal coverage.
    from dspex_rx import TYPES

    refused = {p.values[0] for p in REFUSED_VALUES}
    accepted = {p.values[0] for p in ACCEPTED_WRITES}
    round_tripped = {p.values[0] for p in PLAIN_ROUND_TRIPS} | {"choice", "embedding", "tensor"}
    assert refused == set(TYPES)
    assert accepted == set(TYPES) - {"boolean", "dict"}
    assert round_tripped == set(TYPES)


# --------------------------------------------------------- registration refusals


BAD_CONSTRAINTS = [
    # unknown keys
    pytest.param("float", {"maximum": 1.0}, 0.5,
                 r"unknown constraint\(s\) 'maximum' for type float \(allowed: allow_inf, "
                 r"allow_nan, max, min\)", id="float-unknown-key"),
    pytest.param("integer", {"min": 0, "step": 2}, 1,
                 r"unknown constraint\(s\) 'step' for type integer", id="integer-unknown-key"),
    pytest.param("string", {"choices": ["a"]}, "a",
                 r"unknown constraint\(s\) 'choices' for type string", id="string-choices"),
    pytest.param("boolean", {"min": 0}, True,
                 r"unknown constraint\(s\) 'min' for type boolean \(allowed: none\)",
                 id="boolean-any-key"),
    pytest.param("choice", {"choices": ["a"], "pattern": "a"}, "a",
                 r"unknown constraint\(s\) 'pattern' for type choice", id="choice-unknown-key"),
    pytest.param("embedding", {"shape": [3]}, VEC3,
                 r"unknown constraint\(s\) 'shape' for type embedding", id="embedding-shape"),
    pytest.param("tensor", {"dimensions": 3}, np.zeros(3),
                 r"unknown constraint\(s\) 'dimensions' for type tensor", id="tensor-dimensions"),
    pytest.param("list", {"max_items": 3}, [],
                 r"unknown constraint\(s\) 'max_items' for type list", id="list-unknown-key"),
    pytest.param("dict", {"max_length": 2, "keys": ["a"]}, {},
                 r"unknown constraint\(s\) 'keys', 'max_length' for type dict",
                 id="dict-two-unknown-keys"),
    # bad values
    pytest.param("float", {"min": 2.0, "max": 1.0}, 1.5,
                 r"constraint min 2\.0 is greater than max 1\.0", id="float-min-above-max"),
    pytest.param("integer", {"min": 5, "max": 1}, 3,
                 "constraint min 5 is greater than max 1", id="integer-min-above-max"),
    pytest.param("string", {"min_length": 5, "max_length": 2}, "abc",
                 "constraint min_length 5 is greater than max_length 2",
                 id="string-min-length-above-max-length"),
    pytest.param("list", {"min_length": 3, "max_length": 1}, [1, 2],
                 "constraint min_length 3 is greater than max_length 1",
                 id="list-min-length-above-max-length"),
    pytest.param("float", {"min": "0"}, 0.5, "constraint 'min' must be a number",
                 id="float-min-string"),
    pytest.param("float", {"max": NAN}, 0.5, "constraint 'max' must be a number",
                 id="float-max-nan"),
    pytest.param("float", {"min": True}, 0.5, "constraint 'min' must be a number",
                 id="float-min-bool"),
    pytest.param("float", {"allow_nan": 1}, 0.5, "constraint 'allow_nan' must be a boolean",
                 id="float-allow-nan-int"),
    pytest.param("integer", {"min": 0.5}, 1, "constraint 'min' must be an integer",
                 id="integer-min-float"),
    pytest.param("string", {"pattern": "("}, "a",
                 "constraint 'pattern' is not a valid regex", id="string-pattern-not-regex"),
    pytest.param("string", {"pattern": 5}, "a", "constraint 'pattern' must be a string",
                 id="string-pattern-int"),
    pytest.param("string", {"max_length": -1}, "",
                 "constraint 'max_length' must be an integer >= 0", id="string-negative-max"),
    pytest.param("string", {"min_length": 1.5}, "ab",
                 "constraint 'min_length' must be an integer >= 0", id="string-float-length"),
    pytest.param("list", {"max_length": -1}, [],
                 "constraint 'max_length' must be an integer >= 0", id="list-negative-max"),
    pytest.param("list", {"item_type": "tuple"}, [],
                 "constraint 'item_type' must be one of float, integer", id="list-item-type"),
    pytest.param("choice", {}, "a", r"type choice requires constraint\(s\) choices",
                 id="choice-requires-choices"),
    pytest.param("choice", {"choices": []}, "a",
                 "constraint 'choices' must be a non-empty list of strings", id="choice-empty"),
    pytest.param("choice", {"choices": ["a", 1]}, "a",
                 "constraint 'choices' must be a non-empty list of strings", id="choice-int"),
    pytest.param("choice", {"choices": ["a", "b", "a"]}, "a",
                 "constraint 'choices' has duplicate entries", id="choice-duplicates"),
    pytest.param("module", {"choices": "Predict"}, "Predict",
                 "constraint 'choices' must be a non-empty list of strings",
                 id="module-choices-string"),
    pytest.param("embedding", {"dimensions": 0}, VEC3,
                 "constraint 'dimensions' must be an integer >= 1", id="embedding-dimensions-0"),
    pytest.param("embedding", {"dtype": "int8"}, VEC3,
                 "constraint 'dtype' must be a floating dtype, got 'int8'",
                 id="embedding-dtype-int"),
    pytest.param("embedding", {"normalize": "yes"}, VEC3,
                 "constraint 'normalize' must be a boolean", id="embedding-normalize-string"),
    pytest.param("tensor", {"shape": [2, -2]}, np.zeros((2, 2)),
                 "constraint 'shape' must be a list of dimension sizes", id="tensor-shape-neg"),
    pytest.param("tensor", {"shape": "2x3"}, np.zeros((2, 3)),
                 "constraint 'shape' must be a list of dimension sizes", id="tensor-shape-str"),
    pytest.param("tensor", {"shape": [2, True]}, np.zeros((2, 1)),
                 "constraint 'shape' must be a list of dimension sizes", id="tensor-shape-bool"),
    pytest.param("tensor", {"dtype": "object"}, np.zeros(2),
                 "constraint 'dtype' must be one of", id="tensor-dtype-object"),
]


@pytest.mark.parametrize(("type_name", "constraints", "initial", "rule"), BAD_CONSTRAINTS)
async def test_registration_refuses_bad_constraints(
    session: SessionContext,
    type_name: str,
    constraints: dict[str, Any],
    initial: Any,
    rule: str,
) -> None:
    with pytest.raises(InvalidValueError, match=rule) as info:
        await session.register_variable("constrained", type_name, initial,
                                        constraints=constraints)
    assert str(info.value).startswith("variable 'constrained': "), str(info.value)
    await assert_missing(session, "constrained")


@pytest.mark.parametrize("type_name", ["complex", "Float", "array", ""])
async def test_registration_refuses_unknown_type_name(
    session: SessionContext, type_name: str
) -> None:
    with pytest.raises(InvalidValueError, match=f"unknown variable type '{type_name}'") as info:
        await session.register_variable("typed", type_name, 1)
    assert "variable 'typed'" in str(info.value)
    assert "expected one of float, integer, string" in str(info.value)
    await assert_missing(session, "typed")


async def test_registration_refuses_non_string_type(session: SessionContext) -> None:
    with pytest.raises(VariableTypeError, match="variable type must be a string, got int"):
        await session.register_variable("typed", 5, 1)  # type: ignore[arg-type]
    await assert_missing(session, "typed")


@pytest.mark.parametrize(
    ("alias", "canonical", "value"),
    [("int", "integer", 3), ("str", "string", "s"), ("bool", "boolean", True),
     ("number", "float", 2.5)],
)
async def test_type_aliases_register_the_canonical_type(
    session: SessionContext, alias: str, canonical: str, value: Any
) -> None:
    await session.register_variable("aliased", alias, value)
    got, _, info = await snapshot(session, "aliased")
    assert info["type"] == canonical
    assert_same(got, value)


async def test_registering_an_existing_name_is_refused_and_changes_nothing(
    session: SessionContext,
) -> None:
    var_id = await session.register_variable("temperature", "float", 0.7,
                                             constraints={"max": 2.0})
    await session.set_variable("temperature", 0.9)
    before, version_before, info_before = await snapshot(session, "temperature")

    for type_name, value in [("float", 0.5), ("integer", 3), ("string", "hot")]:
        with pytest.raises(ValueError, match="variable 'temperature' already exists") as info:
            await session.register_variable("temperature", type_name, value)
        assert type(info.value) is AlreadyExistsError

    after, version_after, info_after = await snapshot(session, "temperature")
    assert_same(after, before)
    assert after == 0.9
    assert version_after == version_before == 2
    assert info_after["id"] == var_id
    assert info_after["type"] == "float"
    assert info_after["constraints"] == {"max": 2.0}
    assert info_after["revision"] == info_before["revision"]


async def test_register_many_is_refused_whole_when_one_value_is_bad(
    session: SessionContext,
) -> None:
    with pytest.raises(InvalidValueError, match=r"variable 'b': 5 is above max 3"):
        await session.register_variables([
            {"name": "a", "type": "integer", "initial_value": 1},
            {"name": "b", "type": "integer", "initial_value": 5, "constraints": {"max": 3}},
        ])
    await assert_missing(session, "a")
    await assert_missing(session, "b")


# ---------------------------------------------------------- create_if_missing


@pytest.mark.parametrize(
    ("value", "expected_type", "expected_value"),
    [
        pytest.param(5, "integer", 5, id="int"),
        pytest.param(-(2**63), "integer", -(2**63), id="int64-min"),
        pytest.param(0.5, "float", 0.5, id="float"),
        pytest.param("héllo", "string", "héllo", id="str"),
        pytest.param("", "string", "", id="empty-str"),
        pytest.param(True, "boolean", True, id="bool-true"),
        pytest.param(False, "boolean", False, id="bool-false"),
        pytest.param([1, "a", None], "list", [1, "a", None], id="list"),
        pytest.param([], "list", [], id="empty-list"),
        pytest.param({"a": {"b": [1.5]}}, "dict", {"a": {"b": [1.5]}}, id="dict"),
        pytest.param({}, "dict", {}, id="empty-dict"),
        pytest.param(np.int32(7), "integer", 7, id="numpy-int"),
        pytest.param(np.float32(0.5), "float", 0.5, id="numpy-float"),
        pytest.param(np.bool_(True), "boolean", True, id="numpy-bool"),
    ],
)
async def test_create_if_missing_infers_the_type(
    session: SessionContext, value: Any, expected_type: str, expected_value: Any
) -> None:
    assert await session.set_variable("inferred", value, create_if_missing=True) == 1
    got, version, info = await snapshot(session, "inferred")
    assert info["type"] == expected_type
    assert version == 1
    assert_same(got, expected_value)


async def test_create_if_missing_needs_a_type_hint_for_arrays(session: SessionContext) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(
        TypeError, match=r"variable 'arr': an array could be an embedding or a tensor; pass "
        r"type_hint='embedding' or type_hint='tensor'"
    ) as info:
        await session.set_variable("arr", array, create_if_missing=True)
    assert type(info.value) is VariableTypeError
    await assert_missing(session, "arr")

    assert await session.set_variable("arr", array, create_if_missing=True,
                                      type_hint="tensor") == 1
    got, _, meta = await snapshot(session, "arr")
    assert meta["type"] == "tensor"
    assert_same(got, array)

    vector = np.array([0.5, 0.25], dtype=np.float32)
    await session.set_variable("vec", vector, create_if_missing=True, type_hint="embedding")
    got, _, meta = await snapshot(session, "vec")
    assert meta["type"] == "embedding"
    assert_same(got, vector)


async def test_create_if_missing_type_hint_overrides_inference_and_validates(
    session: SessionContext,
) -> None:
    await session.set_variable("ratio", 1, create_if_missing=True, type_hint="float")
    got, _, meta = await snapshot(session, "ratio")
    assert meta["type"] == "float"
    assert_same(got, 1.0)

    with pytest.raises(VariableTypeError, match="variable 'count': expected integer, got str"):
        await session.set_variable("count", "ten", create_if_missing=True, type_hint="integer")
    await assert_missing(session, "count")

    with pytest.raises(InvalidValueError, match="unknown variable type 'decimal'"):
        await session.set_variable("price", 1.0, create_if_missing=True, type_hint="decimal")
    await assert_missing(session, "price")


async def test_create_if_missing_refuses_values_it_cannot_type(session: SessionContext) -> None:
    with pytest.raises(ValueError, match="variable 'loss': NaN is not allowed"):
        await session.set_variable("loss", NAN, create_if_missing=True)
    await assert_missing(session, "loss")
    with pytest.raises(TypeError, match="variable 'nothing': cannot infer a type from NoneType"):
        await session.set_variable("nothing", None, create_if_missing=True)
    await assert_missing(session, "nothing")


async def test_create_if_missing_does_not_retype_an_existing_variable(
    session: SessionContext,
) -> None:
    await session.register_variable("n", "integer", 1)
    with pytest.raises(VariableTypeError, match="variable 'n': expected integer, got str"):
        await session.set_variable("n", "one", create_if_missing=True, type_hint="string")
    value, version, info = await snapshot(session, "n")
    assert (value, version, info["type"]) == (1, 1, "integer")


# ------------------------------------------------- edge cases found while testing


async def test_tensor_from_list_refuses_lossy_cast_to_int_dtype(session: SessionContext) -> None:
    # An ndarray of float64 is refused for an int8 tensor (unsafe cast); the same numbers as a
    # list must not be silently truncated (1.5 -> 1) instead.
    await session.register_variable("q", "tensor", np.zeros(2, dtype=np.int8),
                                    constraints={"dtype": "int8"})
    with pytest.raises(VariableTypeError, match=r"variable 'q': .*int8"):
        await session.set_variable("q", [1.5, 2.0])
    value, version, _ = await snapshot(session, "q")
    assert version == 1
    assert_same(value, np.zeros(2, dtype=np.int8))


async def test_tensor_from_list_out_of_dtype_range_is_a_clear_error(
    session: SessionContext,
) -> None:
    # [1000] does not fit int8: the caller's bad input, so ValueError/TypeError naming the
    # variable, never an internal server error.
    await session.register_variable("q8", "tensor", np.zeros(1, dtype=np.int8),
                                    constraints={"dtype": "int8"})
    with pytest.raises((InvalidValueError, VariableTypeError), match=r"variable 'q8': .*int8"):
        await session.set_variable("q8", [1000])
    value, version, _ = await snapshot(session, "q8")
    assert version == 1
    assert_same(value, np.zeros(1, dtype=np.int8))


async def test_string_that_is_not_valid_unicode_is_refused_naming_the_variable(
    session: SessionContext,
) -> None:
    # A lone surrogate cannot be encoded as UTF-8, so it cannot travel; the error must say
    # which variable, like every other refusal.
    await session.register_variable("text", "string", "ok")
    with pytest.raises(InvalidValueError, match="variable 'text'"):
        await session.set_variable("text", "bad \ud800 text")
    value, version, _ = await snapshot(session, "text")
    assert (value, version) == ("ok", 1)


async def test_deeply_nested_values_round_trip_or_are_refused_naming_the_variable(
    session: SessionContext,
) -> None:
    shallow: Any = "leaf"
    for _ in range(12):
        shallow = [{"k": shallow, "n": None}]
    await session.register_variable("shallow", "list", shallow)
    assert_same(await session.get_variable("shallow"), shallow)

    deep: Any = 1
    for _ in range(60):
        deep = [deep]
    with pytest.raises(InvalidValueError, match="variable 'deep'"):
        await session.register_variable("deep", "list", deep)
    await assert_missing(session, "deep")


# ------------------------------------------------- dict keys and tensor origins (issue #12)


async def test_dict_keys_are_converted_to_strings_and_the_value_says_so(
    session: SessionContext,
) -> None:
    # The spec's type table: "Keys converted to strings"; this used to be refused.
    given = {1: "a", 2.5: "b", False: "c", None: "d", np.int64(7): "e",
             "nested": {3: [{4: 5}], "plain": 1}}
    await session.register_variable("cfg", "dict", given)
    assert_same(await session.get_variable("cfg", bypass_cache=True), {
        "1": "a", "2.5": "b", "False": "c", "None": "d", "7": "e",
        "nested": {"3": [{"4": 5}], "plain": 1}})
    entry = (await session.get_variables(["cfg"], include_metadata=True))["cfg"]
    assert entry["keys_converted"] is True and entry["metadata"] == {}
    assert type(entry["value"]) is dict  # a plain dict, whatever marks it on the server
    # Only a nested dict converted: still said, on the value (and on its history entry).
    await session.set_variable("cfg", {"a": {1: 2}})
    history = await session.get_variable_history("cfg")
    assert [h.get("keys_converted") for h in history] == [True, True]
    assert (await session.list_variables("^cfg$"))[0]["keys_converted"] is True
    # String keys only: nothing converted, nothing said.
    await session.set_variable("cfg", {"a": {"b": 2}})
    entry = (await session.get_variables(["cfg"], include_metadata=True))["cfg"]
    assert "keys_converted" not in entry and entry["value"] == {"a": {"b": 2}}
    history = await session.get_variable_history("cfg")
    assert [h.get("keys_converted") for h in history] == [None, True, True]


async def test_dict_keys_that_collide_once_converted_are_refused_naming_them(
    session: SessionContext,
) -> None:
    await session.register_variable("cfg", "dict", {"k": 1})
    with pytest.raises(InvalidValueError, match=r"dict keys collide when converted to "
                                                r"strings: 1 and '1' become the same key '1'"):
        await session.set_variable("cfg", {"outer": {1: "int", "1": "str"}})
    with pytest.raises(VariableTypeError, match=r"got tuple \(1, 2\); int, float, bool and "
                                                r"None keys are converted"):
        await session.set_variable("cfg", {(1, 2): "pair"})
    assert await session.get_variable("cfg", bypass_cache=True) == {"k": 1}
    with pytest.raises(VariableTypeError, match="dict keys must be strings, got int 1"):
        await session.set_variable("cfg", {"k": 2}, metadata={1: "x"})  # metadata: str keys
    assert (await session.get_variables(["cfg"], include_metadata=True))["cfg"]["version"] == 1


async def test_a_tensor_written_from_torch_keeps_its_origin_without_torch(
    session: SessionContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dspex_rx.v1 import variables_pb2 as pb

    monkeypatch.setattr(codec, "_torch", lambda: None)  # a reader without torch

    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    await session.register_variable("w", "tensor", TensorDouble(weights))
    # The server keeps the origin with the value and sends it back on the wire.
    response = await session._call(
        "GetVariable", pb.GetVariableRequest(session_id=session.session_id, ref="w"),
        pb.GetVariableResponse)
    assert response.variable.value.array_value.origin == "torch"
    entry = (await session.get_variables(["w"], include_metadata=True))["w"]
    assert entry["tensor_origin"] == "torch"
    # numpy is what a reader without torch gets (and always on request).
    for value in (await session.get_variable("w", bypass_cache=True),
                  await session.get_variable("w", as_tensor="numpy"),
                  (await session.get_variables(["w"], as_tensor="numpy"))["w"]):
        assert type(value) is np.ndarray
        assert_same(value, weights)
    # A write from numpy is a numpy value again: the origin belongs to each value.
    await session.set_variable("w", weights + 1)
    entry = (await session.get_variables(["w"], include_metadata=True))["w"]
    assert "tensor_origin" not in entry
    history = await session.get_variable_history("w")
    assert [type(h["value"]) for h in history] == [np.ndarray, np.ndarray]
    assert [h.get("tensor_origin") for h in history] == [None, "torch"]
    with pytest.raises(ValueError, match="as_tensor must be None, 'numpy' or 'torch', got 'tf'"):
        await session.get_variable("w", as_tensor="tf")


async def test_as_tensor_torch_without_torch_says_what_is_missing(
    session: SessionContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "_torch", lambda: None)  # as where torch is not installed
    await session.register_variable("w", "tensor", np.zeros(3, np.float32))
    with pytest.raises(ImportError, match=r"as_tensor='torch' needs PyTorch, which is not "
                                          r"installed \(from the dspex-rx checkout .*: "
                                          r"pip install -e '\.\[torch\]', or pip install "
                                          r"torch\)"):
        await session.get_variable("w", as_tensor="torch")
