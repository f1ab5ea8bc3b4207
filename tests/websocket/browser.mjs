// Headless Chromium runs page.html against a broker's WebSocket listener; this script watches the page through
// Chromium's remote debugging protocol (no sleeps to guess when the page is ready):
//   1. wait until the page says "subscribed",
//   2. run the publish command given after `--` (e.g. mosquitto_pub over plain TCP),
//   3. wait until <pre id="got"> holds the expected payload; exit 0, or non-zero with the reason.
//
//   node browser.mjs WS_URL TOPIC EXPECTED -- mosquitto_pub -h 127.0.0.1 -p 1883 -t TOPIC -m EXPECTED
// CHROMIUM names the browser binary (default `chromium`); DEADLINE_MS bounds the whole run (default 30000).
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import WebSocket from "ws";

const sep = process.argv.indexOf("--");
const [wsUrl, topic, expected] = process.argv.slice(2, sep < 0 ? undefined : sep);
const publish = sep < 0 ? [] : process.argv.slice(sep + 1);
if (!wsUrl || !topic || !expected || publish.length === 0) {
  console.error("usage: node browser.mjs WS_URL TOPIC EXPECTED -- PUBLISH_COMMAND...");
  process.exit(2);
}
const deadline = Date.now() + Number(process.env.DEADLINE_MS || 30000);
const here = dirname(fileURLToPath(import.meta.url));
const page = pathToFileURL(join(here, "page.html"));
page.search = new URLSearchParams({ url: wsUrl, topic }).toString();

const profile = mkdtempSync(join(tmpdir(), "coremq-chromium-"));
const chromium = spawn(
  process.env.CHROMIUM || "chromium",
  [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--remote-debugging-port=0", `--user-data-dir=${profile}`, page.href,
  ],
  { stdio: ["ignore", "ignore", "pipe"] },
);
let stderr = "";
chromium.stderr.on("data", (d) => { stderr = (stderr + d).slice(-4000); });

let finished = false;
function finish(code, message) {
  if (finished) return;
  finished = true;
  (code === 0 ? console.log : console.error)(`browser.mjs: ${message}`);
  chromium.kill("SIGTERM"); // the browser this script started, by its handle
  chromium.once("exit", () => {
    // Chromium's helper processes may still write into the profile as it exits: retry, and never let cleanup
    // turn a received message into a failure.
    try {
      rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    } catch (e) {
      console.error(`browser.mjs: could not remove ${profile}: ${e.message}`);
    }
    process.exit(code);
  });
  setTimeout(() => { chromium.kill("SIGKILL"); }, 3000).unref();
}
chromium.on("exit", (c) => { if (!finished) finish(1, `chromium exited (${c}) early: ${stderr}`); });
const tick = () => new Promise((r) => setTimeout(r, 50));
async function until(what, probe) {
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick();
  }
}

async function main() {
  // Chromium writes its debugging port into the profile once it listens.
  const port = await until("DevToolsActivePort", () => {
    try { return readFileSync(join(profile, "DevToolsActivePort"), "utf8").split("\n")[0]; } catch { return null; }
  });
  const target = await until("the page target", async () => {
    try {
      const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
      return list.find((t) => t.type === "page" && t.url.startsWith("file:"));
    } catch { return null; }
  });
  const cdp = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((ok, err) => { cdp.once("open", ok); cdp.once("error", err); });
  let nextId = 0;
  const pending = new Map();
  cdp.on("message", (m) => {
    const msg = JSON.parse(m);
    if (pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
  });
  const evaluate = (expression) => new Promise((resolve) => {
    const id = ++nextId;
    pending.set(id, (msg) => resolve(msg.result?.result?.value));
    cdp.send(JSON.stringify({ id, method: "Runtime.evaluate", params: { expression, returnByValue: true } }));
  });
  const status = () => evaluate("document.getElementById('status')?.textContent");
  await until("the page to subscribe", async () => {
    const s = await status();
    if (s && s.startsWith("error")) throw new Error(`page: ${s}`);
    return s === "subscribed";
  });
  const pub = spawnSync(publish[0], publish.slice(1), { encoding: "utf8" });
  if (pub.status !== 0) throw new Error(`${publish.join(" ")} failed (${pub.status}): ${pub.stderr}`);
  const got = await until("the payload in <pre id=got>", async () => {
    const g = await evaluate("document.getElementById('got').textContent");
    return g && g.split("\n").includes(expected) ? g : null;
  });
  cdp.close();
  finish(0, `page received ${JSON.stringify(got.trim())} over ${wsUrl}`);
}
main().catch((e) => finish(1, e.message));
