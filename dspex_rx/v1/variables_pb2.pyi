import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from dspex_rx.v1 import value_pb2 as _value_pb2
from dspex_rx.v1 import session_pb2 as _session_pb2
from dspex_rx.v1 import calls_pb2 as _calls_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VariableType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VARIABLE_TYPE_UNSPECIFIED: _ClassVar[VariableType]
    VARIABLE_TYPE_FLOAT: _ClassVar[VariableType]
    VARIABLE_TYPE_INTEGER: _ClassVar[VariableType]
    VARIABLE_TYPE_STRING: _ClassVar[VariableType]
    VARIABLE_TYPE_BOOLEAN: _ClassVar[VariableType]
    VARIABLE_TYPE_CHOICE: _ClassVar[VariableType]
    VARIABLE_TYPE_MODULE: _ClassVar[VariableType]
    VARIABLE_TYPE_EMBEDDING: _ClassVar[VariableType]
    VARIABLE_TYPE_TENSOR: _ClassVar[VariableType]
    VARIABLE_TYPE_LIST: _ClassVar[VariableType]
    VARIABLE_TYPE_DICT: _ClassVar[VariableType]

class DependencyType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPENDENCY_TYPE_UNSPECIFIED: _ClassVar[DependencyType]
    DEPENDENCY_TYPE_DATA: _ClassVar[DependencyType]
    DEPENDENCY_TYPE_CONSTRAINT: _ClassVar[DependencyType]
    DEPENDENCY_TYPE_OPTIMIZATION: _ClassVar[DependencyType]

class MergeStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MERGE_STRATEGY_UNSPECIFIED: _ClassVar[MergeStrategy]
    MERGE_STRATEGY_REPLACE: _ClassVar[MergeStrategy]
    MERGE_STRATEGY_KEEP: _ClassVar[MergeStrategy]
    MERGE_STRATEGY_MERGE: _ClassVar[MergeStrategy]
VARIABLE_TYPE_UNSPECIFIED: VariableType
VARIABLE_TYPE_FLOAT: VariableType
VARIABLE_TYPE_INTEGER: VariableType
VARIABLE_TYPE_STRING: VariableType
VARIABLE_TYPE_BOOLEAN: VariableType
VARIABLE_TYPE_CHOICE: VariableType
VARIABLE_TYPE_MODULE: VariableType
VARIABLE_TYPE_EMBEDDING: VariableType
VARIABLE_TYPE_TENSOR: VariableType
VARIABLE_TYPE_LIST: VariableType
VARIABLE_TYPE_DICT: VariableType
DEPENDENCY_TYPE_UNSPECIFIED: DependencyType
DEPENDENCY_TYPE_DATA: DependencyType
DEPENDENCY_TYPE_CONSTRAINT: DependencyType
DEPENDENCY_TYPE_OPTIMIZATION: DependencyType
MERGE_STRATEGY_UNSPECIFIED: MergeStrategy
MERGE_STRATEGY_REPLACE: MergeStrategy
MERGE_STRATEGY_KEEP: MergeStrategy
MERGE_STRATEGY_MERGE: MergeStrategy

class Variable(_message.Message):
    __slots__ = ("id", "name", "type", "value", "constraints", "metadata", "version", "mod_revision", "created_at", "updated_at", "updated_by", "create_revision", "description", "owner_session", "access_rules")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OWNER_SESSION_FIELD_NUMBER: _ClassVar[int]
    ACCESS_RULES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    type: VariableType
    value: _value_pb2.Value
    constraints: _value_pb2.MapValue
    metadata: _value_pb2.MapValue
    version: int
    mod_revision: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    create_revision: int
    description: str
    owner_session: str
    access_rules: _containers.RepeatedCompositeFieldContainer[AccessRule]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[VariableType, str]] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., constraints: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., version: _Optional[int] = ..., mod_revision: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., create_revision: _Optional[int] = ..., description: _Optional[str] = ..., owner_session: _Optional[str] = ..., access_rules: _Optional[_Iterable[_Union[AccessRule, _Mapping]]] = ...) -> None: ...

class AccessRule(_message.Message):
    __slots__ = ("session_pattern", "permissions", "conditions", "claim")
    SESSION_PATTERN_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    session_pattern: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    conditions: _value_pb2.MapValue
    claim: int
    def __init__(self, session_pattern: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., conditions: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., claim: _Optional[int] = ...) -> None: ...

class VariableRef(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class InitializeSessionRequest(_message.Message):
    __slots__ = ("session_id", "metadata", "ttl_seconds", "client_name", "must_exist")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MUST_EXIST_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    metadata: _value_pb2.MapValue
    ttl_seconds: float
    client_name: str
    must_exist: bool
    def __init__(self, session_id: _Optional[str] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., ttl_seconds: _Optional[float] = ..., client_name: _Optional[str] = ..., must_exist: _Optional[bool] = ...) -> None: ...

class InitializeSessionResponse(_message.Message):
    __slots__ = ("session_id", "client_id", "created", "revision", "ttl_seconds", "created_at", "session_token", "incarnation")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_id: str
    created: bool
    revision: int
    ttl_seconds: float
    created_at: _timestamp_pb2.Timestamp
    session_token: str
    incarnation: int
    def __init__(self, session_id: _Optional[str] = ..., client_id: _Optional[str] = ..., created: _Optional[bool] = ..., revision: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_token: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id", "client_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_id: str
    def __init__(self, session_id: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("revision", "expires_at")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    revision: int
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, revision: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id", "client_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_id: str
    def __init__(self, session_id: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("session_removed",)
    SESSION_REMOVED_FIELD_NUMBER: _ClassVar[int]
    session_removed: bool
    def __init__(self, session_removed: _Optional[bool] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "created_at", "clients", "variables", "revision", "session_ttl_seconds", "idle_since", "expires_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    created_at: _timestamp_pb2.Timestamp
    clients: int
    variables: int
    revision: int
    session_ttl_seconds: float
    idle_since: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clients: _Optional[int] = ..., variables: _Optional[int] = ..., revision: _Optional[int] = ..., session_ttl_seconds: _Optional[float] = ..., idle_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "all_sessions")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ALL_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    all_sessions: bool
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ..., all_sessions: _Optional[bool] = ...) -> None: ...

class VariableSpec(_message.Message):
    __slots__ = ("name", "type", "initial_value", "constraints", "metadata", "description", "dependencies", "access_rules")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    ACCESS_RULES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: VariableType
    initial_value: _value_pb2.Value
    constraints: _value_pb2.MapValue
    metadata: _value_pb2.MapValue
    description: str
    dependencies: _containers.RepeatedScalarFieldContainer[str]
    access_rules: _containers.RepeatedCompositeFieldContainer[AccessRule]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[VariableType, str]] = ..., initial_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., constraints: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., description: _Optional[str] = ..., dependencies: _Optional[_Iterable[str]] = ..., access_rules: _Optional[_Iterable[_Union[AccessRule, _Mapping]]] = ...) -> None: ...

class RegisterVariableRequest(_message.Message):
    __slots__ = ("session_id", "spec")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    spec: VariableSpec
    def __init__(self, session_id: _Optional[str] = ..., spec: _Optional[_Union[VariableSpec, _Mapping]] = ...) -> None: ...

class RegisterVariableResponse(_message.Message):
    __slots__ = ("variable", "revision")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    variable: Variable
    revision: int
    def __init__(self, variable: _Optional[_Union[Variable, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class RegisterVariablesRequest(_message.Message):
    __slots__ = ("session_id", "specs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    specs: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    def __init__(self, session_id: _Optional[str] = ..., specs: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ...) -> None: ...

class RegisterVariablesResponse(_message.Message):
    __slots__ = ("variables", "revision")
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[Variable]
    revision: int
    def __init__(self, variables: _Optional[_Iterable[_Union[Variable, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetVariableRequest(_message.Message):
    __slots__ = ("session_id", "ref")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ...) -> None: ...

class GetVariableResponse(_message.Message):
    __slots__ = ("variable", "revision")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    variable: Variable
    revision: int
    def __init__(self, variable: _Optional[_Union[Variable, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetVariablesRequest(_message.Message):
    __slots__ = ("session_id", "refs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., refs: _Optional[_Iterable[str]] = ...) -> None: ...

class GetVariablesResponse(_message.Message):
    __slots__ = ("variables", "missing", "revision")
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[Variable]
    missing: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    def __init__(self, variables: _Optional[_Iterable[_Union[Variable, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ...) -> None: ...

class SetVariableRequest(_message.Message):
    __slots__ = ("session_id", "ref", "value", "metadata", "create_if_missing", "type_hint", "expected_version", "fencing_token", "source")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_IF_MISSING_FIELD_NUMBER: _ClassVar[int]
    TYPE_HINT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    value: _value_pb2.Value
    metadata: _value_pb2.MapValue
    create_if_missing: bool
    type_hint: VariableType
    expected_version: int
    fencing_token: int
    source: str
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., create_if_missing: _Optional[bool] = ..., type_hint: _Optional[_Union[VariableType, str]] = ..., expected_version: _Optional[int] = ..., fencing_token: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class SetVariableResponse(_message.Message):
    __slots__ = ("variable", "revision", "created")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    variable: Variable
    revision: int
    created: bool
    def __init__(self, variable: _Optional[_Union[Variable, _Mapping]] = ..., revision: _Optional[int] = ..., created: _Optional[bool] = ...) -> None: ...

class VariableUpdate(_message.Message):
    __slots__ = ("ref", "value", "expected_version")
    REF_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ref: str
    value: _value_pb2.Value
    expected_version: int
    def __init__(self, ref: _Optional[str] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class LeaseGuard(_message.Message):
    __slots__ = ("ref", "optimization_id", "fencing_token")
    REF_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ref: str
    optimization_id: str
    fencing_token: int
    def __init__(self, ref: _Optional[str] = ..., optimization_id: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class UpdateVariablesRequest(_message.Message):
    __slots__ = ("session_id", "updates", "metadata", "atomic", "require_leases")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ATOMIC_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LEASES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    updates: _containers.RepeatedCompositeFieldContainer[VariableUpdate]
    metadata: _value_pb2.MapValue
    atomic: bool
    require_leases: _containers.RepeatedCompositeFieldContainer[LeaseGuard]
    def __init__(self, session_id: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[VariableUpdate, _Mapping]]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., atomic: _Optional[bool] = ..., require_leases: _Optional[_Iterable[_Union[LeaseGuard, _Mapping]]] = ...) -> None: ...

class UpdateResult(_message.Message):
    __slots__ = ("ref", "ok", "error", "error_kind", "variable_id", "name", "version", "mod_revision", "value", "current_version")
    REF_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ref: str
    ok: bool
    error: str
    error_kind: str
    variable_id: str
    name: str
    version: int
    mod_revision: int
    value: _value_pb2.Value
    current_version: int
    def __init__(self, ref: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., error_kind: _Optional[str] = ..., variable_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., mod_revision: _Optional[int] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., current_version: _Optional[int] = ...) -> None: ...

class UpdateVariablesResponse(_message.Message):
    __slots__ = ("results", "revision", "applied")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpdateResult]
    revision: int
    applied: bool
    def __init__(self, results: _Optional[_Iterable[_Union[UpdateResult, _Mapping]]] = ..., revision: _Optional[int] = ..., applied: _Optional[bool] = ...) -> None: ...

class ListVariablesRequest(_message.Message):
    __slots__ = ("session_id", "pattern")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pattern: str
    def __init__(self, session_id: _Optional[str] = ..., pattern: _Optional[str] = ...) -> None: ...

class ListVariablesResponse(_message.Message):
    __slots__ = ("variables", "revision")
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[Variable]
    revision: int
    def __init__(self, variables: _Optional[_Iterable[_Union[Variable, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteVariableRequest(_message.Message):
    __slots__ = ("session_id", "ref", "cascade")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    CASCADE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    cascade: bool
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., cascade: _Optional[bool] = ...) -> None: ...

class DeleteVariableResponse(_message.Message):
    __slots__ = ("id", "revision", "deleted_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    revision: int
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., revision: _Optional[int] = ..., deleted_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AddDependencyRequest(_message.Message):
    __slots__ = ("session_id", "from_ref", "to_ref", "dependency_type", "metadata")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_REF_FIELD_NUMBER: _ClassVar[int]
    TO_REF_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    from_ref: str
    to_ref: str
    dependency_type: DependencyType
    metadata: _value_pb2.MapValue
    def __init__(self, session_id: _Optional[str] = ..., from_ref: _Optional[str] = ..., to_ref: _Optional[str] = ..., dependency_type: _Optional[_Union[DependencyType, str]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ...) -> None: ...

class AddDependencyResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class RemoveDependencyRequest(_message.Message):
    __slots__ = ("session_id", "from_ref", "to_ref")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_REF_FIELD_NUMBER: _ClassVar[int]
    TO_REF_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    from_ref: str
    to_ref: str
    def __init__(self, session_id: _Optional[str] = ..., from_ref: _Optional[str] = ..., to_ref: _Optional[str] = ...) -> None: ...

class RemoveDependencyResponse(_message.Message):
    __slots__ = ("removed", "revision")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    revision: int
    def __init__(self, removed: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class GetDependenciesRequest(_message.Message):
    __slots__ = ("session_id", "ref", "dependents", "transitive")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    TRANSITIVE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    dependents: bool
    transitive: bool
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., dependents: _Optional[bool] = ..., transitive: _Optional[bool] = ...) -> None: ...

class DependencyInfo(_message.Message):
    __slots__ = ("variable_id", "name", "type", "dependency_type", "metadata", "depth")
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    variable_id: str
    name: str
    type: VariableType
    dependency_type: DependencyType
    metadata: _value_pb2.MapValue
    depth: int
    def __init__(self, variable_id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[VariableType, str]] = ..., dependency_type: _Optional[_Union[DependencyType, str]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., depth: _Optional[int] = ...) -> None: ...

class GetDependenciesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DependencyInfo]
    def __init__(self, entries: _Optional[_Iterable[_Union[DependencyInfo, _Mapping]]] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("version", "value", "updated_at", "updated_by", "metadata", "revision")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    version: int
    value: _value_pb2.Value
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    metadata: _value_pb2.MapValue
    revision: int
    def __init__(self, version: _Optional[int] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("session_id", "ref", "limit", "offset", "include_metadata")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    limit: int
    offset: int
    include_metadata: bool
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., include_metadata: _Optional[bool] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("entries", "current_version", "oldest_retained_version", "expired_from_version", "expired_to_version", "retention")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_RETAINED_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    current_version: int
    oldest_retained_version: int
    expired_from_version: int
    expired_to_version: int
    retention: int
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., current_version: _Optional[int] = ..., oldest_retained_version: _Optional[int] = ..., expired_from_version: _Optional[int] = ..., expired_to_version: _Optional[int] = ..., retention: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("session_id", "ref", "version", "reason", "expected_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    version: int
    reason: str
    expected_version: int
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("variable", "revision")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    variable: Variable
    revision: int
    def __init__(self, variable: _Optional[_Union[Variable, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class OptimizationStatus(_message.Message):
    __slots__ = ("variable_id", "name", "is_optimizing", "optimization_id", "optimizer_type", "holder_session", "holder_client", "iteration", "best_value", "best_metrics", "best_score", "has_best", "started_at", "last_update", "expires_at", "state", "end_reason", "ended_at", "max_iterations", "ttl_seconds", "config", "minimize", "final_value", "has_final", "takes_reports", "proposal_iteration", "proposal_version", "has_report", "report_metrics", "reported_by")
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IS_OPTIMIZING_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_SESSION_FIELD_NUMBER: _ClassVar[int]
    HOLDER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    BEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    BEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_BEST_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MINIMIZE_FIELD_NUMBER: _ClassVar[int]
    FINAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_FINAL_FIELD_NUMBER: _ClassVar[int]
    TAKES_REPORTS_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ITERATION_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_REPORT_FIELD_NUMBER: _ClassVar[int]
    REPORT_METRICS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BY_FIELD_NUMBER: _ClassVar[int]
    variable_id: str
    name: str
    is_optimizing: bool
    optimization_id: str
    optimizer_type: str
    holder_session: str
    holder_client: str
    iteration: int
    best_value: _value_pb2.Value
    best_metrics: _value_pb2.MapValue
    best_score: float
    has_best: bool
    started_at: _timestamp_pb2.Timestamp
    last_update: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    state: str
    end_reason: str
    ended_at: _timestamp_pb2.Timestamp
    max_iterations: int
    ttl_seconds: float
    config: _value_pb2.MapValue
    minimize: bool
    final_value: _value_pb2.Value
    has_final: bool
    takes_reports: bool
    proposal_iteration: int
    proposal_version: int
    has_report: bool
    report_metrics: _value_pb2.MapValue
    reported_by: str
    def __init__(self, variable_id: _Optional[str] = ..., name: _Optional[str] = ..., is_optimizing: _Optional[bool] = ..., optimization_id: _Optional[str] = ..., optimizer_type: _Optional[str] = ..., holder_session: _Optional[str] = ..., holder_client: _Optional[str] = ..., iteration: _Optional[int] = ..., best_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., best_metrics: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., best_score: _Optional[float] = ..., has_best: _Optional[bool] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_update: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[str] = ..., end_reason: _Optional[str] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_iterations: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., config: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., minimize: _Optional[bool] = ..., final_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., has_final: _Optional[bool] = ..., takes_reports: _Optional[bool] = ..., proposal_iteration: _Optional[int] = ..., proposal_version: _Optional[int] = ..., has_report: _Optional[bool] = ..., report_metrics: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., reported_by: _Optional[str] = ...) -> None: ...

class StartOptimizationRequest(_message.Message):
    __slots__ = ("session_id", "ref", "optimizer_type", "config", "max_iterations", "ttl_seconds", "client_id", "minimize", "takes_reports")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MINIMIZE_FIELD_NUMBER: _ClassVar[int]
    TAKES_REPORTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    optimizer_type: str
    config: _value_pb2.MapValue
    max_iterations: int
    ttl_seconds: float
    client_id: str
    minimize: bool
    takes_reports: bool
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., optimizer_type: _Optional[str] = ..., config: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., max_iterations: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., client_id: _Optional[str] = ..., minimize: _Optional[bool] = ..., takes_reports: _Optional[bool] = ...) -> None: ...

class StartOptimizationResponse(_message.Message):
    __slots__ = ("status", "fencing_token", "revision")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    status: OptimizationStatus
    fencing_token: int
    revision: int
    def __init__(self, status: _Optional[_Union[OptimizationStatus, _Mapping]] = ..., fencing_token: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class OptimizationStepRequest(_message.Message):
    __slots__ = ("session_id", "ref", "optimization_id", "fencing_token", "has_record", "iteration", "evaluated_value", "metrics", "score", "has_write", "write_value", "write_iteration")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HAS_RECORD_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_VALUE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_WRITE_FIELD_NUMBER: _ClassVar[int]
    WRITE_VALUE_FIELD_NUMBER: _ClassVar[int]
    WRITE_ITERATION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    optimization_id: str
    fencing_token: int
    has_record: bool
    iteration: int
    evaluated_value: _value_pb2.Value
    metrics: _value_pb2.MapValue
    score: float
    has_write: bool
    write_value: _value_pb2.Value
    write_iteration: int
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., optimization_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., has_record: _Optional[bool] = ..., iteration: _Optional[int] = ..., evaluated_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., metrics: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., score: _Optional[float] = ..., has_write: _Optional[bool] = ..., write_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., write_iteration: _Optional[int] = ...) -> None: ...

class OptimizationStepResponse(_message.Message):
    __slots__ = ("status", "variable", "revision")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    status: OptimizationStatus
    variable: Variable
    revision: int
    def __init__(self, status: _Optional[_Union[OptimizationStatus, _Mapping]] = ..., variable: _Optional[_Union[Variable, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class FinishOptimizationRequest(_message.Message):
    __slots__ = ("session_id", "ref", "optimization_id", "fencing_token", "has_record", "iteration", "evaluated_value", "metrics", "score", "has_final", "final_value", "state", "reason", "metadata")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HAS_RECORD_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_VALUE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_FINAL_FIELD_NUMBER: _ClassVar[int]
    FINAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    optimization_id: str
    fencing_token: int
    has_record: bool
    iteration: int
    evaluated_value: _value_pb2.Value
    metrics: _value_pb2.MapValue
    score: float
    has_final: bool
    final_value: _value_pb2.Value
    state: str
    reason: str
    metadata: _value_pb2.MapValue
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., optimization_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., has_record: _Optional[bool] = ..., iteration: _Optional[int] = ..., evaluated_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., metrics: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., score: _Optional[float] = ..., has_final: _Optional[bool] = ..., final_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ...) -> None: ...

class FinishOptimizationResponse(_message.Message):
    __slots__ = ("status", "variable", "revision")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    status: OptimizationStatus
    variable: Variable
    revision: int
    def __init__(self, status: _Optional[_Union[OptimizationStatus, _Mapping]] = ..., variable: _Optional[_Union[Variable, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class StopOptimizationRequest(_message.Message):
    __slots__ = ("session_id", "ref", "reason", "optimization_id", "apply_best", "client_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    APPLY_BEST_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    reason: str
    optimization_id: str
    apply_best: bool
    client_id: str
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., reason: _Optional[str] = ..., optimization_id: _Optional[str] = ..., apply_best: _Optional[bool] = ..., client_id: _Optional[str] = ...) -> None: ...

class StopOptimizationResponse(_message.Message):
    __slots__ = ("stopped", "status", "revision", "variable")
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    stopped: bool
    status: OptimizationStatus
    revision: int
    variable: Variable
    def __init__(self, stopped: _Optional[bool] = ..., status: _Optional[_Union[OptimizationStatus, _Mapping]] = ..., revision: _Optional[int] = ..., variable: _Optional[_Union[Variable, _Mapping]] = ...) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("session_id", "ref", "metrics", "iteration", "version", "client_id", "optimization_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    metrics: _value_pb2.MapValue
    iteration: int
    version: int
    client_id: str
    optimization_id: str
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., metrics: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., iteration: _Optional[int] = ..., version: _Optional[int] = ..., client_id: _Optional[str] = ..., optimization_id: _Optional[str] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ("status", "revision")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    status: OptimizationStatus
    revision: int
    def __init__(self, status: _Optional[_Union[OptimizationStatus, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetOptimizationStatusRequest(_message.Message):
    __slots__ = ("session_id", "ref", "optimization_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    optimization_id: str
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., optimization_id: _Optional[str] = ...) -> None: ...

class GetOptimizationStatusResponse(_message.Message):
    __slots__ = ("status", "revision")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    status: OptimizationStatus
    revision: int
    def __init__(self, status: _Optional[_Union[OptimizationStatus, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetOptimizationHistoryRequest(_message.Message):
    __slots__ = ("session_id", "ref", "limit", "since", "optimization_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    limit: int
    since: _timestamp_pb2.Timestamp
    optimization_id: str
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., limit: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., optimization_id: _Optional[str] = ...) -> None: ...

class OptimizationHistoryEntry(_message.Message):
    __slots__ = ("optimization_id", "iteration", "value", "metrics", "score", "timestamp", "revision", "optimizer_type")
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_TYPE_FIELD_NUMBER: _ClassVar[int]
    optimization_id: str
    iteration: int
    value: _value_pb2.Value
    metrics: _value_pb2.MapValue
    score: float
    timestamp: _timestamp_pb2.Timestamp
    revision: int
    optimizer_type: str
    def __init__(self, optimization_id: _Optional[str] = ..., iteration: _Optional[int] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., metrics: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., score: _Optional[float] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., optimizer_type: _Optional[str] = ...) -> None: ...

class GetOptimizationHistoryResponse(_message.Message):
    __slots__ = ("entries", "revision")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[OptimizationHistoryEntry]
    revision: int
    def __init__(self, entries: _Optional[_Iterable[_Union[OptimizationHistoryEntry, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class ExportedDependency(_message.Message):
    __slots__ = ("name", "dependency_type", "metadata")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dependency_type: DependencyType
    metadata: _value_pb2.MapValue
    def __init__(self, name: _Optional[str] = ..., dependency_type: _Optional[_Union[DependencyType, str]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ...) -> None: ...

class ExportedVariable(_message.Message):
    __slots__ = ("name", "type", "value", "constraints", "metadata", "description", "version", "created_at", "updated_at", "updated_by", "has_history", "history", "has_dependencies", "dependencies", "access_rules")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    HAS_HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HAS_DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    ACCESS_RULES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: VariableType
    value: _value_pb2.Value
    constraints: _value_pb2.MapValue
    metadata: _value_pb2.MapValue
    description: str
    version: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    has_history: bool
    history: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    has_dependencies: bool
    dependencies: _containers.RepeatedCompositeFieldContainer[ExportedDependency]
    access_rules: _containers.RepeatedCompositeFieldContainer[AccessRule]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[VariableType, str]] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., constraints: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., description: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., has_history: _Optional[bool] = ..., history: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., has_dependencies: _Optional[bool] = ..., dependencies: _Optional[_Iterable[_Union[ExportedDependency, _Mapping]]] = ..., access_rules: _Optional[_Iterable[_Union[AccessRule, _Mapping]]] = ...) -> None: ...

class SetVariablePermissionsRequest(_message.Message):
    __slots__ = ("session_id", "ref", "rules")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    rules: _containers.RepeatedCompositeFieldContainer[AccessRule]
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[AccessRule, _Mapping]]] = ...) -> None: ...

class SetVariablePermissionsResponse(_message.Message):
    __slots__ = ("revision", "variable")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    variable: Variable
    def __init__(self, revision: _Optional[int] = ..., variable: _Optional[_Union[Variable, _Mapping]] = ...) -> None: ...

class CheckVariableAccessRequest(_message.Message):
    __slots__ = ("session_id", "ref", "permission")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    permission: str
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., permission: _Optional[str] = ...) -> None: ...

class CheckVariableAccessResponse(_message.Message):
    __slots__ = ("allowed", "variable_id", "owner_session")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_SESSION_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    variable_id: str
    owner_session: str
    def __init__(self, allowed: _Optional[bool] = ..., variable_id: _Optional[str] = ..., owner_session: _Optional[str] = ...) -> None: ...

class VariablesSnapshot(_message.Message):
    __slots__ = ("format_version", "session_id", "revision", "exported_at", "include_history", "include_dependencies", "variables")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    session_id: str
    revision: int
    exported_at: _timestamp_pb2.Timestamp
    include_history: bool
    include_dependencies: bool
    variables: _containers.RepeatedCompositeFieldContainer[ExportedVariable]
    def __init__(self, format_version: _Optional[int] = ..., session_id: _Optional[str] = ..., revision: _Optional[int] = ..., exported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., include_history: _Optional[bool] = ..., include_dependencies: _Optional[bool] = ..., variables: _Optional[_Iterable[_Union[ExportedVariable, _Mapping]]] = ...) -> None: ...

class ExportVariablesRequest(_message.Message):
    __slots__ = ("session_id", "include_history", "include_dependencies", "filter_pattern")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    FILTER_PATTERN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    include_history: bool
    include_dependencies: bool
    filter_pattern: str
    def __init__(self, session_id: _Optional[str] = ..., include_history: _Optional[bool] = ..., include_dependencies: _Optional[bool] = ..., filter_pattern: _Optional[str] = ...) -> None: ...

class ExportVariablesResponse(_message.Message):
    __slots__ = ("snapshot", "revision")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    snapshot: VariablesSnapshot
    revision: int
    def __init__(self, snapshot: _Optional[_Union[VariablesSnapshot, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ImportVariablesRequest(_message.Message):
    __slots__ = ("session_id", "snapshot", "merge_strategy", "dry_run")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    MERGE_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    snapshot: VariablesSnapshot
    merge_strategy: MergeStrategy
    dry_run: bool
    def __init__(self, session_id: _Optional[str] = ..., snapshot: _Optional[_Union[VariablesSnapshot, _Mapping]] = ..., merge_strategy: _Optional[_Union[MergeStrategy, str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ImportOutcome(_message.Message):
    __slots__ = ("name", "action", "message", "error_kind", "variable", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: str
    message: str
    error_kind: str
    variable: Variable
    version: int
    def __init__(self, name: _Optional[str] = ..., action: _Optional[str] = ..., message: _Optional[str] = ..., error_kind: _Optional[str] = ..., variable: _Optional[_Union[Variable, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class ImportVariablesResponse(_message.Message):
    __slots__ = ("outcomes", "revision", "applied", "dry_run", "dependencies_added")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_ADDED_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ImportOutcome]
    revision: int
    applied: bool
    dry_run: bool
    dependencies_added: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ImportOutcome, _Mapping]]] = ..., revision: _Optional[int] = ..., applied: _Optional[bool] = ..., dry_run: _Optional[bool] = ..., dependencies_added: _Optional[int] = ...) -> None: ...

class DerivationStatus(_message.Message):
    __slots__ = ("variable_id", "name", "inputs", "owner_session", "owner_client", "standby_sessions", "standby_clients", "last_computed_revision", "stale", "stale_reason", "ttl_seconds", "expires_at", "derived")
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OWNER_SESSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    STANDBY_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    STANDBY_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_COMPUTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DERIVED_FIELD_NUMBER: _ClassVar[int]
    variable_id: str
    name: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    owner_session: str
    owner_client: str
    standby_sessions: _containers.RepeatedScalarFieldContainer[str]
    standby_clients: _containers.RepeatedScalarFieldContainer[str]
    last_computed_revision: int
    stale: bool
    stale_reason: str
    ttl_seconds: float
    expires_at: _timestamp_pb2.Timestamp
    derived: bool
    def __init__(self, variable_id: _Optional[str] = ..., name: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., owner_session: _Optional[str] = ..., owner_client: _Optional[str] = ..., standby_sessions: _Optional[_Iterable[str]] = ..., standby_clients: _Optional[_Iterable[str]] = ..., last_computed_revision: _Optional[int] = ..., stale: _Optional[bool] = ..., stale_reason: _Optional[str] = ..., ttl_seconds: _Optional[float] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., derived: _Optional[bool] = ...) -> None: ...

class DeriveLeaseRequest(_message.Message):
    __slots__ = ("session_id", "ref", "client_id", "action", "inputs", "ttl_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    client_id: str
    action: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., client_id: _Optional[str] = ..., action: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class DeriveLeaseResponse(_message.Message):
    __slots__ = ("status", "role", "fencing_token", "revision")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    status: DerivationStatus
    role: str
    fencing_token: int
    revision: int
    def __init__(self, status: _Optional[_Union[DerivationStatus, _Mapping]] = ..., role: _Optional[str] = ..., fencing_token: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...
