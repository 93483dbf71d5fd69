// The interactive API reference (`/docs`), rendered from what the server itself serves.
//
//     [SCREENSHOT=…png] node tests/browser/docs.mjs <docs url> <text to wait for>
//
// Waits until the page shows <text> (an operation's summary), then prints the operation
// summaries it rendered (see browser.mjs for the browser log and every requested URL).

import { runInBrowser } from './browser.mjs';

const [url, text] = process.argv.slice(2);
if (!url || !text) {
  console.error('usage: node docs.mjs <docs url> <text to wait for>');
  process.exit(64);
}

await runInBrowser(async (page) => {
  const response = await page.goto(url, { waitUntil: 'domcontentloaded' });
  await page.getByText(text).first().waitFor();
  const result = {
    status: response.status(),
    csp: response.headers()['content-security-policy'] ?? null,
    title: await page.locator('.info .title').first().textContent().catch(() => null),
    summaries: await page.locator('.opblock-summary-description').allTextContents(),
    operation_ids: await page.locator('.opblock-summary-operation-id').allTextContents(),
  };
  if (process.env.SCREENSHOT) {
    await page.screenshot({ path: process.env.SCREENSHOT });
  }
  return result;
});
