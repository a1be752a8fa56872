// The Fluent organization's Node.js logger (fluent-logger) forwarding to the fluent source over
// the forward protocol, each message acknowledged: node fluent_forward.mjs <port> <mode> <count>
// [shared key] [CA file for TLS] (a user for the handshake in FLUENT_USERNAME and FLUENT_PASSWORD). <mode> is the logger's eventMode: Message, PackedForward or
// CompressedPackedForward. Exits 0 once every event is acknowledged; on an error it prints it and
// exits 2 (a refused handshake among them).
import fs from 'node:fs';
import net from 'node:net';
import logger from 'fluent-logger';

// fluent-logger 3.4.1 starts listening for a message's acknowledgement only in its write's
// callback, which over TLS can run after the acknowledgement has been read and emitted to no
// listener: the server's answer is then lost and the logger reports "ack response timeout"
// (seen under load, beside other tests: the 30-byte answer emitted while nothing listened, then
// the timeout, 2 runs in 3). A chunk that arrives while nothing listens is held here and handed
// to the next listener, as the logger means it.
const emit = net.Socket.prototype.emit;
net.Socket.prototype.emit = function (event, ...args) {
  if (event !== 'data' || this.listenerCount('data') > 0) return emit.call(this, event, ...args);
  if (!this.heldData) {
    this.heldData = [];
    this.on('newListener', (name) => {
      if (name === 'data') process.nextTick(() => this.heldData.splice(0).forEach((chunk) => this.emit('data', chunk)));
    });
  }
  this.heldData.push(args[0]);
  return false;
};

const [port, eventMode, count, sharedKey, ca] = process.argv.slice(2);
const options = {
  host: '127.0.0.1',
  port: Number(port),
  eventMode,
  requireAckResponse: true,
  ackResponseTimeout: 20000,
  enableReconnect: false,
  timeout: 20,
  internalLogger: { info() {}, error() {} },
};
if (sharedKey) {
  // With user authentication, the user from FLUENT_USERNAME and FLUENT_PASSWORD.
  const username = process.env.FLUENT_USERNAME || '';
  const password = process.env.FLUENT_PASSWORD || '';
  options.security = { clientHostname: 'node-client', sharedKey, username, password };
}
if (ca) {
  options.tls = true;
  options.tlsOptions = { ca: fs.readFileSync(ca) };
}
const sender = logger.createFluentSender('web', options);
sender.on('error', (error) => {
  console.log(`error: ${error.message || error}`);
  process.exit(2);
});
setTimeout(() => {
  console.log('error: timed out');
  process.exit(3);
}, 60000).unref();

const sent = [];
for (let i = 0; i < Number(count); i++) {
  const time = new logger.EventTime(1764547200 + i, i * 1000);
  sent.push(
    new Promise((resolve, reject) => {
      sender.emit('access', { path: `/item/${i}`, status: 200, n: i, bytes: i * 1.5 }, time, (error) =>
        error ? reject(error) : resolve(),
      );
    }),
  );
}
try {
  await Promise.all(sent);
} catch (error) {
  console.log(`error: ${error.message || error}`);
  process.exit(2);
}
sender.end();
console.log(`acknowledged ${count}`);
