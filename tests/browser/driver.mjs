// The browser side of the rig: Debian's Chromium, driven by playwright-core, commanded from
// Python (tests/browser/rig.py) over stdin and stdout, one JSON object per line.
//
// Requests (stdin):   {"id": 7, "op": "open", "page": "alice", "url": "http://..."}
// Replies (stdout):   {"id": 7, "ok": true, "result": ...}
//                     {"id": 7, "ok": false, "error": "..."}
// Events (stdout):    {"event": "registered", "page": "alice", "detail": {...}}
//
// The first line is {"event": "ready", "detail": {"browser_pid": N, "version": "..."}}:
// Python kills that process group at the end whatever happened, so no Chromium outlives a
// test. Requests are handled concurrently; each page is its own browser context (its own
// cookies, storage and permissions), so two pages are two independent phones.
//
// Test pages (tests/browser/pages/) call window.rigEvent(kind, detail) for SIP events; the
// driver forwards them as events of that page, with the page's console messages and
// uncaught errors ("console", "pageerror").
//
// Ops: open, close, eval, library, fill, click, text, value, wait_text, inbound_bytes,
// wait_inbound, screenshot, quit. Environment: CHROMIUM (default /usr/bin/chromium),
// RIG_IGNORE_CERTIFICATE_ERRORS=1 (accept any TLS certificate: self-signed WSS in tests).
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { setTimeout as delay } from 'node:timers/promises';

// Flags that work as root in a container with no screen and a closed network; fake media
// devices (a beep on the microphone) with permission granted without asking. playwright
// gives Chromium a new empty --user-data-dir of its own for every launch.
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

// WSS and HTTPS tests against a self-signed certificate: for this test profile only.
if (process.env.RIG_IGNORE_CERTIFICATE_ERRORS === '1') CHROMIUM_FLAGS.push('--ignore-certificate-errors');

function send(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

function emit(page, kind, detail = {}) {
  send({ event: kind, page, detail });
}

const server = await chromium.launchServer({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  chromiumSandbox: false,
  host: '127.0.0.1',
  args: CHROMIUM_FLAGS,
  // Python stops us through stdin; a signal should not race it into a second close.
  handleSIGINT: false,
});
const browser = await chromium.connect(server.wsEndpoint());
const pages = new Map();

function pageNamed(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page named ${JSON.stringify(name)} (open it first)`);
  return entry.page;
}

// The page's own API object: window.phone on the test pages, window.sipgwPhone on the
// phone page shipped in the package.
async function inboundBytes(page, api = 'phone') {
  return page.evaluate(async (name) => {
    const object = window[name];
    if (!object) throw new Error(`this page has no window.${name}`);
    return object.inboundBytes();
  }, api);
}

const ops = {
  // `block`: URL patterns answered with a 404, as if those files were missing.
  async open({ page: name, url, block = [] }) {
    if (pages.has(name)) throw new Error(`a page named ${JSON.stringify(name)} is open already`);
    const context = await browser.newContext({ viewport: { width: 900, height: 800 } });
    for (const pattern of block) {
      await context.route(pattern, (route) => route.fulfill({ status: 404, body: 'blocked by the rig' }));
    }
    const page = await context.newPage();
    pages.set(name, { context, page });
    await page.exposeFunction('rigEvent', (kind, detail) => emit(name, kind, detail ?? {}));
    page.on('console', (message) => emit(name, 'console', { type: message.type(), text: message.text() }));
    page.on('pageerror', (error) => emit(name, 'pageerror', { message: String(error) }));
    await page.goto(url);
    return { url: page.url() };
  },

  async close({ page: name }) {
    const entry = pages.get(name);
    if (!entry) return false;
    pages.delete(name);
    await entry.context.close();
    return true;
  },

  // Call a method of the page's API object: {"op": "eval", "page": "a", "fn": "call",
  // "args": ["sip:bob@sipgw.test"]}. Its result (awaited if a promise) is the reply.
  async eval({ page: name, fn, args = [], api = 'phone' }) {
    return pageNamed(name).evaluate(async ([objectName, method, params]) => {
      const object = window[objectName];
      if (!object || typeof object[method] !== 'function') {
        throw new Error(`this page has no window.${objectName}.${method}()`);
      }
      const result = await object[method](...params);
      return result === undefined ? null : result;
    }, [api, fn, args]);
  },

  async fill({ page: name, selector, value }) {
    await pageNamed(name).fill(selector, value);
    return null;
  },

  async click({ page: name, selector }) {
    await pageNamed(name).click(selector);
    return null;
  },

  async text({ page: name, selector }) {
    return pageNamed(name).textContent(selector);
  },

  async value({ page: name, selector }) {
    return pageNamed(name).inputValue(selector);
  },

  async wait_text({ page: name, selector, text, timeout_ms: timeout = 10000 }) {
    const page = pageNamed(name);
    await page.waitForFunction(
      ([s, t]) => (document.querySelector(s)?.textContent ?? '').includes(t),
      [selector, text],
      { timeout, polling: 50 },
    );
    return page.textContent(selector);
  },

  async inbound_bytes({ page: name, api = 'phone' }) {
    return inboundBytes(pageNamed(name), api);
  },

  // Poll the page's inbound-rtp bytesReceived until it exceeds `above`, every 50 ms, for
  // at most `timeout` ms; the reply is the last count (the caller judges it).
  async wait_inbound({ page: name, api = 'phone', above = 0, timeout_ms: timeout = 10000 }) {
    const page = pageNamed(name);
    const deadline = Date.now() + timeout;
    let bytes = await inboundBytes(page, api);
    while (bytes <= above && Date.now() < deadline) {
      await delay(50);
      bytes = await inboundBytes(page, api);
    }
    return bytes;
  },

  async library({ page: name }) {
    return pageNamed(name).evaluate(() => window.phone?.library ?? null);
  },

  async screenshot({ page: name, path, fullPage = true }) {
    await pageNamed(name).screenshot({ path, fullPage });
    return path;
  },

  async quit() {
    await shutdown(0);
  },
};

let stopping = false;
async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  try {
    await browser.close();
  } finally {
    await server.close();
    process.exit(code);
  }
}

async function handle(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    send({ id: null, ok: false, error: `not JSON: ${line.slice(0, 200)}` });
    return;
  }
  const { id, op, ...args } = request;
  try {
    if (!Object.hasOwn(ops, op)) throw new Error(`unknown op ${JSON.stringify(op)}`);
    if (op === 'quit') send({ id, ok: true, result: null });
    const result = await ops[op](args);
    send({ id, ok: true, result: result ?? null });
  } catch (error) {
    send({ id, ok: false, error: String(error?.message ?? error) });
  }
}

send({ event: 'ready', page: null, detail: { browser_pid: server.process().pid, version: browser.version() } });
const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line.trim()) handle(line);
});
// Python went away: close Chromium and go.
input.on('close', () => shutdown(0));
