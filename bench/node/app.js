// The many-workers benchmark's app: one process, one event loop, an HTTP server
// answering every request with one short line, as a Node service is written.
//
// Under start_server it serves the listener it inherited (SERVER_STARTER_PORT is
// "host:port=fd;..."; the first is ours). Under PM2's cluster mode it listens on
// $PORT, and node's cluster module shares that port between the workers.
//
// SIGTERM (start_server) and SIGINT (PM2's reload) stop it gracefully: no new
// connections, the requests under way answered, then exit; bounded at 5 s so a
// stuck client cannot hold a reload.
'use strict';
const http = require('http');

function listenOn() {
  const ports = process.env.SERVER_STARTER_PORT;
  if (ports) {
    return { fd: Number(ports.split(';')[0].split('=').pop()) };
  }
  return { port: Number(process.env.PORT), host: '127.0.0.1' };
}

const worker = process.env.SERVER_STARTER_WORKER || process.env.NODE_APP_INSTANCE || '0';
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(`hello from worker ${worker}, pid ${process.pid}\n`);
});
server.listen(listenOn());

function stop() {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
