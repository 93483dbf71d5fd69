// The first hour in the dev console, keystroke by keystroke, then the widget page.
//
//     CONSOLE_EMAIL=… CONSOLE_PASSWORD=… [SCREENSHOT_DIR=…] \
//       node tests/browser/first-hour.mjs <console url> <widget page url>
//
// Console: waits for the account directory, types the account (first a prefix that is no
// account, then the rest), signs in, waits for the agent list, creates an agent and waits for
// it at the top of the list. Widget page: waits for the configuration, clicks the launcher and
// waits for the guest session. Prints what each step rendered (see browser.mjs); with
// SCREENSHOT_DIR, saves console.png and widget.png there.

import path from 'node:path';

import { runInBrowser } from './browser.mjs';

const [consoleUrl, widgetUrl] = process.argv.slice(2);
const email = process.env.CONSOLE_EMAIL;
const password = process.env.CONSOLE_PASSWORD;
const screenshots = process.env.SCREENSHOT_DIR;
const NEW_AGENT = process.env.CONSOLE_NEW_AGENT || 'Night shift';
if (!consoleUrl || !widgetUrl || !email || !password) {
  console.error('usage: CONSOLE_EMAIL=… CONSOLE_PASSWORD=… node first-hour.mjs <console url> <widget url>');
  process.exit(64);
}

const texts = (locator) => locator.allTextContents();

await runInBrowser(async (page) => {
  const result = {};

  // --- The console ---
  const consoleResponse = await page.goto(consoleUrl, { waitUntil: 'domcontentloaded' });
  result.console_csp = consoleResponse.headers()['content-security-policy'] ?? null;
  await page.locator('#account-list button').first().waitFor();
  result.directory = await texts(page.locator('#account-list button'));

  // As you type: "acm" is no account, "acme" is.
  const account = page.locator('#account');
  const status = page.locator('#account-status');
  await account.click();
  await account.pressSequentially('acm', { delay: 60 });
  await page.locator('#account[data-checked="acm"][data-state="invalid"]').waitFor();
  result.status_after_acm = await status.textContent();
  await account.pressSequentially('e', { delay: 60 });
  await page.locator('#account[data-checked="acme"][data-state="valid"]').waitFor();
  result.status_after_acme = await status.textContent();

  await page.locator('#email').pressSequentially(email, { delay: 10 });
  await page.locator('#password').pressSequentially(password, { delay: 10 });
  await page.locator('#signin-button').click();
  await page.locator('#agents[data-loaded]').waitFor();
  result.heading = await page.locator('#agents-section h2').textContent();
  result.agents = await texts(page.locator('#agents .agent-name'));

  // Create an agent: it appears at the top (newest first).
  const before = result.agents.length;
  await page.locator('#agent-name').pressSequentially(NEW_AGENT, { delay: 10 });
  await page.locator('#agent-name').press('Enter');
  await page.locator(`#agents[data-loaded="${before + 1}"]`).waitFor();
  result.agents_after_create = await texts(page.locator('#agents .agent-name'));
  result.console_errors = await texts(page.locator('.error'));
  if (screenshots) {
    await page.locator('#agent-name').blur();
    await page.screenshot({ path: path.join(screenshots, 'console.png'), fullPage: true });
  }

  // --- The widget page ---
  const widgetResponse = await page.goto(widgetUrl, { waitUntil: 'domcontentloaded' });
  result.widget_csp = widgetResponse.headers()['content-security-policy'] ?? null;
  result.widget_origin = await page.evaluate(() => location.origin);
  const launcher = page.locator('#launcher:not([hidden])');
  await Promise.race([
    launcher.waitFor(),
    page.locator('#widget-error:not(:empty)').waitFor(),
  ]);
  result.widget_error = await page.locator('#widget-error').textContent();
  result.widget_agents = await texts(page.locator('#widget-agents .agent-name'));
  result.launcher = await launcher.textContent({ timeout: 1_000 }).catch(() => null);
  if (result.launcher !== null) {
    await launcher.click();
    await Promise.race([
      page.locator('#widget-body[data-session="guest"]').waitFor(),
      page.locator('#widget-body .error').waitFor(),
    ]);
    result.widget_agent = await page.locator('#widget-agent-name').textContent();
    result.greeting = await page.locator('#widget-body .bubble').textContent({ timeout: 1_000 }).catch(() => null);
    result.session = await page.locator('#widget-session').textContent();
    result.token_shown = await page.locator('#guest-token').textContent({ timeout: 1_000 }).catch(() => null);
    result.token_length = Number(await page.locator('#guest-token').getAttribute('data-length', { timeout: 1_000 }).catch(() => 0));
    result.widget_body_errors = await texts(page.locator('#widget-body .error'));
  }
  if (screenshots) {
    await page.screenshot({ path: path.join(screenshots, 'widget.png'), fullPage: true });
  }
  return result;
});
