// A real socket.io client: connects through the gateway (long polling first, then the
// upgrade to WebSocket), checks an echo, reports what the server saw, and with `wait`
// stays connected and reports how the connection ended.
// Usage: node client.js URL TOKEN query|cookie [wait]
const { io } = require("socket.io-client");

const [url, token, mode, wait] = process.argv.slice(2);
const options = { reconnection: false, transports: ["polling", "websocket"], timeout: 5000 };
if (mode === "query") options.query = { access_token: token };
else options.extraHeaders = { cookie: `theme=dark; session=${token}` };

const socket = io(url, options);
const out = (o) => console.log(JSON.stringify(o));
const fail = (why) => {
  out({ error: String(why) });
  process.exit(1);
};
setTimeout(() => fail("timeout"), 15000).unref();
socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
socket.on("connect", () => {
  const report = async () => {
    const echo = await socket.timeout(3000).emitWithAck("echo", { hello: "world" });
    const whoami = await socket.timeout(3000).emitWithAck("whoami");
    out({ connected: true, transport: socket.io.engine.transport.name, echo, whoami });
    if (!wait) {
      socket.disconnect();
      process.exit(0);
    }
    socket.on("disconnect", (reason) => {
      out({ disconnected: reason });
      process.exit(0);
    });
  };
  if (socket.io.engine.transport.name === "websocket") report().catch(fail);
  else socket.io.engine.once("upgrade", () => report().catch(fail));
});
