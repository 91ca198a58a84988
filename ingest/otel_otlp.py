"""Decode OTLP trace payloads (protobuf or JSON) into the mapping's `OtelSpan`.

OTLP/JSON differs from protobuf's canonical JSON in one place that matters: trace
and span ids are hex strings, not base64. We turn them into base64 before handing
the document to protobuf's JSON parser, which then does the rest (camelCase,
int64 as strings, enum names or numbers).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from llmpulse.ingest.otel_mapping import OtelEvent, OtelSpan

_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in Span.SpanKind.items()}
_STATUS = {Status.STATUS_CODE_UNSET: "UNSET", Status.STATUS_CODE_OK: "OK", Status.STATUS_CODE_ERROR: "ERROR"}


class PayloadError(ValueError):
    """The request body is not a valid ExportTraceServiceRequest (permanent: HTTP 400)."""


def _hex_ids_to_b64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _ID_KEYS and isinstance(v, str) and v:
                try:
                    v = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError as exc:
                    raise PayloadError(f"{k} is not hex") from exc
            out[k] = _hex_ids_to_b64(v)
        return out
    if isinstance(node, list):
        return [_hex_ids_to_b64(v) for v in node]
    return node


def parse_request(body: bytes, json_body: bool) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    try:
        if json_body:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise PayloadError("JSON body is not an object")
            json_format.ParseDict(_hex_ids_to_b64(doc), req, ignore_unknown_fields=True)
        else:
            req.ParseFromString(body)
    except PayloadError:
        raise
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise PayloadError(_parse_failure(exc)) from exc
    except Exception as exc:  # whatever the parser raises on a client's bytes is the bytes' fault
        raise PayloadError(_parse_failure(exc)) from exc
    return req


def _parse_failure(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, RecursionError) or "MaxDepth" in text or "recursion" in text.lower():
        return "nesting deeper than the protobuf/JSON parser allows (100 levels)"
    return f"{type(exc).__name__}: {text[:200]}"


def encode_response(rejected: int, message: str, json_body: bool) -> bytes:
    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    if json_body:
        return json.dumps(json_format.MessageToDict(resp)).encode()
    return resp.SerializeToString()


def any_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _hex(raw: bytes) -> str:
    return raw.hex() if raw and any(raw) else ""


def iter_spans(req: ExportTraceServiceRequest) -> Iterator[OtelSpan]:
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for s in ss.spans:
                yield OtelSpan(
                    name=s.name,
                    trace_id=_hex(s.trace_id),
                    span_id=_hex(s.span_id),
                    parent_span_id=_hex(s.parent_span_id),
                    start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano or s.start_time_unix_nano,
                    kind=_KINDS.get(s.kind, "UNSPECIFIED"),
                    status_code=_STATUS.get(s.status.code, "UNSET"),
                    status_message=s.status.message,
                    attributes=attributes(s.attributes),
                    events=[OtelEvent(e.name, e.time_unix_nano, attributes(e.attributes)) for e in s.events],
                    resource=resource,
                    scope_name=scope,
                )


__all__ = ["PayloadError", "parse_request", "encode_response", "iter_spans"]
