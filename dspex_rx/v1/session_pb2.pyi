import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from dspex_rx.v1 import value_pb2 as _value_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_TYPE_UNSPECIFIED: _ClassVar[UpdateType]
    UPDATE_TYPE_INITIAL: _ClassVar[UpdateType]
    UPDATE_TYPE_VALUE_CHANGE: _ClassVar[UpdateType]
    UPDATE_TYPE_DELETED: _ClassVar[UpdateType]
    UPDATE_TYPE_DEPENDENCY_CHANGED: _ClassVar[UpdateType]
    UPDATE_TYPE_RESYNC: _ClassVar[UpdateType]
    UPDATE_TYPE_OPTIMIZATION: _ClassVar[UpdateType]
    UPDATE_TYPE_REVOKED: _ClassVar[UpdateType]
UPDATE_TYPE_UNSPECIFIED: UpdateType
UPDATE_TYPE_INITIAL: UpdateType
UPDATE_TYPE_VALUE_CHANGE: UpdateType
UPDATE_TYPE_DELETED: UpdateType
UPDATE_TYPE_DEPENDENCY_CHANGED: UpdateType
UPDATE_TYPE_RESYNC: UpdateType
UPDATE_TYPE_OPTIMIZATION: UpdateType
UPDATE_TYPE_REVOKED: UpdateType

class VariableEvent(_message.Message):
    __slots__ = ("variable_id", "name", "value", "old_value", "version", "revision", "update_type", "metadata", "source", "timestamp")
    VARIABLE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    variable_id: str
    name: str
    value: _value_pb2.Value
    old_value: _value_pb2.Value
    version: int
    revision: int
    update_type: UpdateType
    metadata: _value_pb2.MapValue
    source: str
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, variable_id: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., old_value: _Optional[_Union[_value_pb2.Value, _Mapping]] = ..., version: _Optional[int] = ..., revision: _Optional[int] = ..., update_type: _Optional[_Union[UpdateType, str]] = ..., metadata: _Optional[_Union[_value_pb2.MapValue, _Mapping]] = ..., source: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OpenStream(_message.Message):
    __slots__ = ("session_id", "client_id", "progress_interval_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_id: str
    progress_interval_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., client_id: _Optional[str] = ..., progress_interval_seconds: _Optional[float] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("request_id", "refs", "include_initial", "from_revision")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INITIAL_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    refs: _containers.RepeatedScalarFieldContainer[str]
    include_initial: bool
    from_revision: int
    def __init__(self, request_id: _Optional[int] = ..., refs: _Optional[_Iterable[str]] = ..., include_initial: _Optional[bool] = ..., from_revision: _Optional[int] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("request_id", "variable_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    variable_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[int] = ..., variable_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("open", "subscribe", "unsubscribe", "ping")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    open: OpenStream
    subscribe: Subscribe
    unsubscribe: Unsubscribe
    ping: Ping
    def __init__(self, open: _Optional[_Union[OpenStream, _Mapping]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...

class StreamOpened(_message.Message):
    __slots__ = ("session_id", "revision", "log_horizon")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LOG_HORIZON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    revision: int
    log_horizon: int
    def __init__(self, session_id: _Optional[str] = ..., revision: _Optional[int] = ..., log_horizon: _Optional[int] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("request_id", "variable_ids", "names", "revision", "error", "error_kind", "refs", "missing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_IDS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    variable_ids: _containers.RepeatedScalarFieldContainer[str]
    names: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    error: str
    error_kind: str
    refs: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[int] = ..., variable_ids: _Optional[_Iterable[str]] = ..., names: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ..., error: _Optional[str] = ..., error_kind: _Optional[str] = ..., refs: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class Unsubscribed(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("events", "revision", "conflated")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CONFLATED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[VariableEvent]
    revision: int
    conflated: bool
    def __init__(self, events: _Optional[_Iterable[_Union[VariableEvent, _Mapping]]] = ..., revision: _Optional[int] = ..., conflated: _Optional[bool] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce", "revision")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    revision: int
    def __init__(self, nonce: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("frames", "opened", "subscribed", "unsubscribed", "progress", "pong")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    opened: StreamOpened
    subscribed: Subscribed
    unsubscribed: Unsubscribed
    progress: Progress
    pong: Pong
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ..., opened: _Optional[_Union[StreamOpened, _Mapping]] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., unsubscribed: _Optional[_Union[Unsubscribed, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ...) -> None: ...
