"""An OTLP/gRPC trace receiver built from parts the project did not write: python grpcio (gRPC
C-core) serving TraceService/Export, and the opentelemetry-proto package's generated messages
(the protobuf runtime's own strict decoder). Usage: python collector.py PORT
Prints {"listening": PORT} once, then one JSON line per span received: its ids as hex, name, kind,
flags, status code, attributes, resource attributes and scope name."""
import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

Request = trace_service_pb2.ExportTraceServiceRequest
Response = trace_service_pb2.ExportTraceServiceResponse


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def export(request, context):
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                print(json.dumps({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "flags": s.flags,
                    "status": s.status.code,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": attributes(s.attributes),
                    "resource": resource,
                    "scope": ss.scope.name,
                }), flush=True)
    return Response()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(
        export, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString)},
),))
port = server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
print(json.dumps({"listening": port}), flush=True)
server.wait_for_termination()
