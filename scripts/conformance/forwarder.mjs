// A local forwarder for the MCP conformance suite: the suite cannot send a bearer token, so
// this adds `Authorization: Bearer $CHIRON_TOKEN` to every request and streams both ways.
// Host and Origin are passed through unchanged, so chiron's DNS-rebinding checks still see
// what the suite sent.
//
// Usage: CHIRON_TOKEN=… node forwarder.mjs <listen-port> <chiron-port>
import http from 'node:http';

const [listenPort, targetPort] = process.argv.slice(2).map(Number);
const token = process.env.CHIRON_TOKEN;
if (!listenPort || !targetPort || !token) {
  console.error('usage: CHIRON_TOKEN=… node forwarder.mjs <listen-port> <chiron-port>');
  process.exit(2);
}

const agent = new http.Agent({ keepAlive: true });
http
  .createServer((req, res) => {
    const headers = { ...req.headers, authorization: `Bearer ${token}` };
    const upstream = http.request(
      { host: '127.0.0.1', port: targetPort, path: req.url, method: req.method, headers, agent },
      (reply) => {
        res.writeHead(reply.statusCode, reply.headers);
        reply.pipe(res);
      },
    );
    upstream.on('error', (err) => {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`forwarder: ${err.message}`);
    });
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  })
  .listen(listenPort, '127.0.0.1', () => console.log(`forwarding 127.0.0.1:${listenPort} -> ${targetPort}`));
