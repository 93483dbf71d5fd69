// Opens one page and prints what the page reported.
//
//     node tests/browser/run-page.mjs <url>
//
// The page writes its outcome into <pre id="result" data-done="1">; this script waits for that
// (no fixed sleeps) and prints the element's text, parsed as JSON, with the browser's log
// (see browser.mjs).

import { runInBrowser, resultTimeoutMs } from './browser.mjs';

const url = process.argv[2];
if (!url) {
  console.error('usage: node run-page.mjs <url>');
  process.exit(64);
}

await runInBrowser(async (page) => {
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  const result = page.locator('#result[data-done="1"]');
  try {
    await result.waitFor({ state: 'attached' });
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
  return JSON.parse(await result.textContent());
});
