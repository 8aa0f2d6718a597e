// One unary gRPC call with @grpc/grpc-js (a client the project did not write), raw bytes in and
// out. Usage: node call.mjs HOST:PORT /pkg.Service/Method HEX_BODY [key=value metadata ...]
// Prints {"code": <grpc status>, "details": "...", "reply_hex": "..."} on one line.
import grpc from '@grpc/grpc-js';

const [addr, path, hex, ...pairs] = process.argv.slice(2);
const client = new grpc.Client(addr, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
for (const pair of pairs) {
  const i = pair.indexOf('=');
  metadata.add(pair.slice(0, i), pair.slice(i + 1));
}
const identity = (b) => b;
client.makeUnaryRequest(path, identity, identity, Buffer.from(hex, 'hex'), metadata,
  { deadline: Date.now() + 10000 }, (err, reply) => {
    const out = err
      ? { code: err.code, details: err.details }
      : { code: 0, details: '', reply_hex: Buffer.from(reply).toString('hex') };
    console.log(JSON.stringify(out));
    client.close();
  });
