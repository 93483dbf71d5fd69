// Helpers shared by the console pages (loaded before each page's own script). Text only
// through textContent (never innerHTML).
'use strict';

const $ = (id) => document.getElementById(id);

/** fetch → { status, body } (body parsed as JSON when it is JSON). */
async function call(url, init = {}) {
  const resp = await fetch(url, init);
  const text = await resp.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
  return { status: resp.status, body };
}

/** The API's error as one line: its message and code. */
function errorText(result) {
  const e = result.body && result.body.error;
  return e ? `${e.message} (${e.code})` : `HTTP ${result.status}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
