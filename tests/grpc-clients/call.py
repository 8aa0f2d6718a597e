"""One unary gRPC call with python grpcio (gRPC C-core, a client the project did not write), raw
bytes in and out. Usage: python call.py HOST:PORT /pkg.Service/Method HEX_BODY [key=value ...]
Prints {"code": <grpc status>, "details": "...", "reply_hex": "..."} on one line. With GRPC_CA (and
GRPC_CERT, GRPC_KEY for mTLS) set to PEM files, the channel is TLS."""
import json
import os
import sys

import grpc

addr, path, body = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
metadata = [tuple(p.split("=", 1)) for p in sys.argv[4:]]



def channel():
    ca = os.environ.get("GRPC_CA")
    if not ca:
        return grpc.insecure_channel(addr)
    read = lambda name: open(os.environ[name], "rb").read() if os.environ.get(name) else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(read("GRPC_CA"), read("GRPC_KEY"), read("GRPC_CERT"))
    return grpc.secure_channel(addr, creds)


with channel() as channel:
    call = channel.unary_unary(path)  # no serializers: bytes in, bytes out
    try:
        reply = call(body, metadata=metadata, timeout=10)
        out = {"code": 0, "details": "", "reply_hex": reply.hex()}
    except grpc.RpcError as e:
        out = {"code": e.code().value[0], "details": e.details()}
print(json.dumps(out))
