// Opens one page in headless Chromium and prints what the page reported.
//
//     node tests/browser/run-page.mjs <url>
//
// The page writes its outcome into <pre id="result" data-done="1">; this script waits for that
// (no fixed sleeps), prints the element's text to stdout and exits 0. What the page logged
// (console messages, failed requests) goes to stderr. On a timeout or a browser error it prints
// a message to stderr and exits non-zero.
//
// Chromium is Debian's (`apt-get install chromium`), or the one named by $CHROMIUM; only the npm
// package playwright-core is used, never Playwright's own browser downloads.

import { chromium } from 'playwright-core';

const url = process.argv[2];
if (!url) {
  console.error('usage: node run-page.mjs <url>');
  process.exit(64);
}

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const resultTimeoutMs = Number(process.env.BROWSER_RESULT_TIMEOUT_MS || 20_000);

// Chromium's own background traffic (updates, sync, field trials) is refused on a closed network;
// these flags keep it quiet. launch() gives every run a fresh, temporary profile directory.
const args = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Whatever happens inside Playwright, never outlive this.
const watchdog = setTimeout(() => {
  console.error(`run-page: gave up after ${resultTimeoutMs + 40_000} ms in total`);
  process.exit(3);
}, resultTimeoutMs + 40_000);
watchdog.unref();

const logs = [];
let browser;
let code = 0;
try {
  browser = await chromium.launch({ executablePath, args, headless: true, timeout: 30_000 });
  const page = await browser.newPage();
  page.on('console', (msg) => logs.push(`console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
  page.on('requestfailed', (req) =>
    logs.push(`requestfailed: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`),
  );
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: resultTimeoutMs });
  const result = page.locator('#result[data-done="1"]');
  try {
    await result.waitFor({ state: 'attached', timeout: resultTimeoutMs });
  } catch (err) {
    const partial = await page
      .locator('#result')
      .textContent({ timeout: 1_000 })
      .catch(() => null);
    throw new Error(
      `timed out after ${resultTimeoutMs} ms waiting for #result on ${url}` +
        (partial ? ` (it holds: ${partial})` : ''),
      { cause: err },
    );
  }
  process.stdout.write(`${await result.textContent()}\n`);
} catch (err) {
  code = 1;
  console.error(`run-page: ${err.message}`);
} finally {
  // What the page logged (CORS refusals, failed requests) explains a surprising result too.
  for (const line of logs) console.error(line);
  if (browser) await browser.close().catch(() => {});
}
process.exit(code);
