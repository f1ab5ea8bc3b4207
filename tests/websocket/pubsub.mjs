// MQTT.js over WebSocket: connect, subscribe, publish, receive what was published, exit 0; anything else (an
// error, a wrong payload, nothing within the deadline) exits non-zero with the reason on stderr.
//
//   node pubsub.mjs [ws://127.0.0.1:8080/mqtt]      (or BROKER_URL=...)
import mqtt from "mqtt";

const url = process.argv[2] || process.env.BROKER_URL || "ws://127.0.0.1:8080/mqtt";
const topic = `coremq/ws/${process.pid}/${Date.now()}`;
// A small message, one that needs a 16-bit WebSocket length and one that needs a 64-bit length, at QoS 0, 1, 2.
const messages = [
  { payload: "hello over websocket", qos: 0 },
  { payload: "x".repeat(1000), qos: 1 },
  { payload: "y".repeat(100000), qos: 2 },
];
const deadlineMs = Number(process.env.DEADLINE_MS || 15000);

function fail(why) {
  console.error(`pubsub.mjs: ${why}`);
  process.exit(1);
}

const timer = setTimeout(() => fail(`timed out after ${deadlineMs} ms`), deadlineMs);
const client = mqtt.connect(url, {
  clientId: `ws-pubsub-${process.pid}`,
  protocolVersion: Number(process.env.MQTT_VERSION || 4),
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
client.on("error", (e) => fail(`client error: ${e.message}`));
client.on("close", () => {
  if (received < messages.length) fail("connection closed before every message came back");
});

let received = 0;
client.on("message", (t, payload) => {
  const want = messages[received];
  if (t !== topic) fail(`message on ${t}, expected ${topic}`);
  if (payload.toString() !== want.payload) {
    fail(`message ${received}: ${payload.length} bytes, expected ${want.payload.length}`);
  }
  received += 1;
  if (received === messages.length) {
    clearTimeout(timer);
    client.end(false, () => {
      console.log(`pubsub.mjs: ${received} messages round-tripped over ${url}`);
      process.exit(0);
    });
  }
});

client.on("connect", () => {
  client.subscribe(topic, { qos: 2 }, (err, granted) => {
    if (err) fail(`subscribe: ${err.message}`);
    if (!granted || granted[0].qos > 2) fail(`subscribe refused: ${JSON.stringify(granted)}`);
    // In order, each after the previous is acknowledged, so they come back in order.
    const send = (i) => {
      if (i === messages.length) return;
      const m = messages[i];
      client.publish(topic, m.payload, { qos: m.qos }, (e) => {
        if (e) fail(`publish ${i}: ${e.message}`);
        send(i + 1);
      });
    };
    send(0);
  });
});
