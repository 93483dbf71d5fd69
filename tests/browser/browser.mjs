// The one way these tests drive a browser: Debian's Chromium (`apt-get install chromium`), or
// the one named by $CHROMIUM, through the npm package playwright-core; never Playwright's own
// browser downloads.
//
//     import { runInBrowser } from './browser.mjs';
//     await runInBrowser(async (page, browser) => ({ ...what the scenario found }));
//
// The scenario's result is printed as JSON on stdout with `browser.requests` (every URL the
// page asked for) and `browser.console` (console messages, page errors, failed requests,
// Content-Security-Policy violations) added; the same log goes to stderr. The process exits 0;
// on a timeout or an error it prints a message to stderr and exits non-zero.

import { chromium } from 'playwright-core';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
export const resultTimeoutMs = Number(process.env.BROWSER_RESULT_TIMEOUT_MS || 20_000);

// Chromium's own background traffic (updates, sync, field trials) is refused on a closed
// network; these flags keep it quiet. launch() gives every run a fresh, temporary profile.
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

export async function runInBrowser(scenario, { viewport = { width: 1100, height: 800 } } = {}) {
  // Whatever happens inside Playwright, never outlive this.
  const watchdog = setTimeout(() => {
    console.error(`browser: gave up after ${resultTimeoutMs + 40_000} ms in total`);
    process.exit(3);
  }, resultTimeoutMs + 40_000);
  watchdog.unref();

  const logs = [];
  const requests = [];
  let browser;
  let code = 0;
  try {
    browser = await chromium.launch({ executablePath, args, headless: true, timeout: 30_000 });
    const page = await browser.newPage({ viewport });
    page.setDefaultTimeout(resultTimeoutMs);
    page.on('console', (msg) => logs.push(`console.${msg.type()}: ${msg.text()}`));
    page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
    page.on('request', (req) => requests.push(req.url()));
    page.on('requestfailed', (req) =>
      logs.push(`requestfailed: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`),
    );
    // CSP violations, reported by the page itself.
    await page.exposeFunction('__reportCsp', (text) => logs.push(`csp: ${text}`));
    await page.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e) =>
        window.__reportCsp(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`),
      );
    });
    const result = await scenario(page, browser);
    process.stdout.write(`${JSON.stringify({ ...result, browser: { requests, console: logs } })}\n`);
  } catch (err) {
    code = 1;
    console.error(`browser: ${err.message}`);
  } finally {
    // What the page logged (CORS refusals, failed requests) explains a surprising result too.
    for (const line of logs) console.error(line);
    if (browser) await browser.close().catch(() => {});
  }
  process.exit(code);
}
