// The dev console: account discovery, dev sign-in, then the account's agents.
// Every URL is relative to the page's <base> (`/` or `/hub-api/`). Text only through
// textContent (never innerHTML). The token lives in this page's memory only.
'use strict';

// $, call, errorText and el: common.js.

let session = null; // { token, account, name, email }

// --- Account discovery -------------------------------------------------------------------

const SLUG = /^[a-z0-9][a-z0-9_-]{0,62}$/;
let validation = 0; // the newest validation asked for; older answers are dropped
let validateTimer = null;

async function listAccounts() {
  const list = $('account-list');
  let result;
  try {
    result = await call('api/accounts');
  } catch (e) {
    return;
  }
  if (result.status !== 200 || !Array.isArray(result.body)) return; // directory off
  list.replaceChildren();
  for (const a of result.body) {
    const chip = el('button', '', `${a.name} (${a.account})`);
    chip.type = 'button';
    chip.dataset.account = a.account;
    chip.addEventListener('click', () => {
      $('account').value = a.account;
      validateNow();
      $('email').focus();
    });
    list.append(chip);
  }
}

function setAccountStatus(text, state, value) {
  const status = $('account-status');
  status.textContent = text;
  status.className = state === 'valid' ? 'hint ok' : state === 'invalid' ? 'error' : 'hint';
  const input = $('account');
  input.classList.toggle('valid', state === 'valid');
  input.classList.toggle('invalid', state === 'invalid');
  input.dataset.state = state;
  // Which value the state is about (the input may have changed since).
  if (value === undefined) delete input.dataset.checked;
  else input.dataset.checked = value;
  if (state !== 'valid') delete status.dataset.name;
}

async function validateNow() {
  clearTimeout(validateTimer);
  const value = $('account').value.trim();
  const mine = ++validation;
  if (!value) {
    setAccountStatus('', 'empty');
    return;
  }
  if (!SLUG.test(value)) {
    setAccountStatus('Not an account name (lowercase letters, digits, - and _)', 'invalid', value);
    return;
  }
  setAccountStatus('Checking…', 'checking');
  let result;
  try {
    result = await call(`api/accounts/validate/${encodeURIComponent(value)}`);
  } catch (e) {
    if (mine === validation) setAccountStatus(`Cannot reach the server: ${e}`, 'invalid', value);
    return;
  }
  if (mine !== validation) return;
  if (result.status === 200 && result.body.valid) {
    setAccountStatus(`✓ ${result.body.name}`, 'valid', value);
    $('account-status').dataset.name = result.body.name;
  } else if (result.status === 404) {
    setAccountStatus('No such account', 'invalid', value);
  } else {
    setAccountStatus(errorText(result), 'invalid', value);
  }
}

// As you type: one validation once typing pauses.
$('account').addEventListener('input', () => {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(validateNow, 200);
});

// --- Sign-in ------------------------------------------------------------------------------

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const account = $('account').value.trim();
  const email = $('email').value.trim();
  const password = $('password').value;
  $('login-error').textContent = '';
  if (!account || !email || !password) {
    $('login-error').textContent = 'Account, email and password are required.';
    return;
  }
  const button = $('signin-button');
  button.disabled = true;
  try {
    const result = await call('api/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ account, email, password }),
    });
    if (result.status !== 200) {
      $('login-error').textContent = result.status === 404
        ? 'Dev login is off on this server.'
        : errorText(result);
      return;
    }
    const name = $('account-status').dataset.name || account;
    session = { token: result.body.token, account: result.body.account, email, name };
    $('password').value = '';
    showAgents();
  } catch (e) {
    $('login-error').textContent = `Cannot reach the server: ${e}`;
  } finally {
    button.disabled = false;
  }
});

$('signout').addEventListener('click', () => {
  session = null;
  $('agents').replaceChildren();
  $('agents-section').hidden = true;
  $('signin').hidden = false;
  $('password').focus();
});

// --- Agents -------------------------------------------------------------------------------

function api(path, init = {}) {
  const headers = {
    Authorization: `Bearer ${session.token}`,
    'X-Account-ID': session.account,
    ...(init.headers || {}),
  };
  return call(`api/v1/${path}`, { ...init, headers });
}

async function showAgents() {
  $('signin').hidden = true;
  $('agents-section').hidden = false;
  $('account-name').textContent =
    session.name === session.account ? session.account : `${session.name} (${session.account})`;
  $('signed-in-as').textContent = `signed in as ${session.email}`;
  await loadAgents();
  $('agent-name').focus();
}

async function loadAgents() {
  const list = $('agents');
  $('agents-error').textContent = '';
  let result;
  try {
    result = await api('agents');
  } catch (e) {
    $('agents-error').textContent = `Cannot reach the server: ${e}`;
    return;
  }
  if (result.status !== 200) {
    $('agents-error').textContent = errorText(result);
    return;
  }
  list.replaceChildren(...result.body.map(agentItem));
  const n = result.body.length;
  $('agents-count').textContent = n === 1 ? '1 agent' : `${n} agents`;
  list.dataset.loaded = String(n);
}

function agentItem(agent) {
  const li = el('li');
  li.dataset.id = agent.id;
  const title = el('div');
  title.append(el('span', 'agent-name', agent.name));
  title.append(el('span', `status status-${agent.status}`, agent.status));
  li.append(title);
  if (agent.description) li.append(el('div', '', agent.description));
  const created = new Date(agent.created_at).toLocaleString('en-GB', {
    dateStyle: 'medium', timeStyle: 'short',
  });
  li.append(el('div', 'agent-meta',
    `${agent.category.replace('_', ' ')} · ${agent.llm_model} · ${agent.auth_mode} · created ${created}`));
  const knowledge = [
    ...agent.playbooks.map((p) => p.display_name),
    ...agent.faqs.map((f) => f.title),
  ];
  if (knowledge.length) {
    const tags = el('div', 'agent-meta');
    for (const k of knowledge) tags.append(el('span', 'tag', k));
    li.append(tags);
  }
  return li;
}

$('create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = $('agent-name').value.trim();
  if (!name) {
    $('agents-error').textContent = 'A name is required.';
    return;
  }
  const button = $('create-button');
  button.disabled = true;
  try {
    const result = await api('agents', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name }),
    });
    if (result.status !== 201) {
      $('agents-error').textContent = errorText(result);
      return;
    }
    $('agent-name').value = '';
    await loadAgents();
  } catch (e) {
    $('agents-error').textContent = `Cannot reach the server: ${e}`;
  } finally {
    button.disabled = false;
  }
});

listAccounts();
if ($('account').value) validateNow();
