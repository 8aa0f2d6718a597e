"""An OTLP/gRPC trace receiver built from parts the project did not write: python grpcio (gRPC
C-core) serving TraceService/Export, and the opentelemetry-proto package's generated messages
(the protobuf runtime's own strict decoder).
Usage: python collector.py PORT [--tls CERT KEY [--client-ca CA]]
With --tls it serves TLS with that certificate, and with --client-ca it demands a client
certificate that CA signed. Prints {"listening": PORT} once, then per export one JSON line
{"metadata": {...}} (the request's headers) and one JSON line per span received: its ids as hex,
name, kind, flags, status code, attributes, resource attributes and scope name."""
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
    print(json.dumps({"metadata": {m.key: m.value for m in context.invocation_metadata()}}), flush=True)
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
address = f"127.0.0.1:{sys.argv[1]}"
if "--tls" in sys.argv:
    at = sys.argv.index("--tls")
    read = lambda path: open(path, "rb").read()
    client_ca = read(sys.argv[sys.argv.index("--client-ca") + 1]) if "--client-ca" in sys.argv else None
    credentials = grpc.ssl_server_credentials(
        [(read(sys.argv[at + 2]), read(sys.argv[at + 1]))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    port = server.add_secure_port(address, credentials)
else:
    port = server.add_insecure_port(address)
server.start()
print(json.dumps({"listening": port}), flush=True)
server.wait_for_termination()
