"""One unary gRPC call with python grpcio (gRPC C-core, a client the project did not write), raw
bytes in and out. Usage: python call.py HOST:PORT /pkg.Service/Method HEX_BODY [key=value ...]
Prints {"code": <grpc status>, "details": "...", "reply_hex": "..."} on one line."""
import json
import sys

import grpc

addr, path, body = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
metadata = [tuple(p.split("=", 1)) for p in sys.argv[4:]]
with grpc.insecure_channel(addr) as channel:
    call = channel.unary_unary(path)  # no serializers: bytes in, bytes out
    try:
        reply = call(body, metadata=metadata, timeout=10)
        out = {"code": 0, "details": "", "reply_hex": reply.hex()}
    except grpc.RpcError as e:
        out = {"code": e.code().value[0], "details": e.details()}
print(json.dumps(out))
