// A real socket.io server for jwtgate's integration test. Prints {"port": N} once listening.
// Every connection's handshake (query and headers) is reported back on `whoami`.
const http = require("http");
const { Server } = require("socket.io");

const server = http.createServer();
const io = new Server(server, { pingInterval: 25000, pingTimeout: 20000 });
io.on("connection", (socket) => {
  socket.on("echo", (payload, ack) => ack(payload));
  socket.on("whoami", (ack) =>
    ack({
      query: socket.handshake.query,
      headers: socket.handshake.headers,
      transport: socket.conn.transport.name,
    })
  );
});
server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ port: server.address().port }));
});
