"""The variable type system, one import away: type names (``registry``), constraint schemas
(``constraints``), value validation (``values``) and marks of origin (``origin``).

Pure Python over plain values (None, bool, int, float, str, list, dict, numpy arrays);
no gRPC. The server's store validates every write here before applying anything.
"""

from dspex_rx.core.constraints import CONSTRAINT_SCHEMAS, check_constraints
from dspex_rx.core.origin import (
    KeysConvertedDict,
    TorchOriginArray,
    keep_origin,
    value_system_metadata,
)
from dspex_rx.core.registry import (
    ARRAY_DTYPES,
    INT64_MAX,
    INT64_MIN,
    TYPES,
    describe_value,
    infer_type,
    is_number,
    normalize_type,
)
from dspex_rx.core.values import (
    check_metadata,
    check_plain,
    same_value,
    validate_stored,
    validate_value,
)

__all__ = [
    "ARRAY_DTYPES",
    "CONSTRAINT_SCHEMAS",
    "INT64_MAX",
    "INT64_MIN",
    "TYPES",
    "KeysConvertedDict",
    "TorchOriginArray",
    "check_constraints",
    "check_metadata",
    "check_plain",
    "describe_value",
    "infer_type",
    "is_number",
    "keep_origin",
    "normalize_type",
    "same_value",
    "validate_stored",
    "validate_value",
    "value_system_metadata",
]
