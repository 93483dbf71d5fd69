// The widget's guest flow, as a customer's page runs it: the configuration for a widget key,
// then a guest session for an agent. Every URL is relative to the page's <base>, so the calls
// carry this page's origin, which the key's allowlist must contain.
'use strict';

// $, call, errorText and el: common.js.

const COLOR = /^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$/;
const POSITIONS = ['br', 'bl', 'tr', 'tl'];
let state = null; // { clientKey, agent, session }

$('origin').textContent = location.origin;

async function load(clientKey) {
  $('widget-error').textContent = '';
  $('config-section').hidden = true;
  $('launcher').hidden = true;
  $('widget').hidden = true;
  state = null;
  const query = new URLSearchParams({ client_key: clientKey });
  const pinned = new URLSearchParams(location.search).get('agent_id');
  if (pinned) query.set('agent_id', pinned);
  let result;
  try {
    result = await call(`api/v1/widget/config?${query}`);
  } catch (e) {
    $('widget-error').textContent = `Cannot reach the server: ${e}`;
    return;
  }
  if (result.status !== 200) {
    $('widget-error').textContent = errorText(result);
    return;
  }
  const config = result.body;
  const agents = config.agent ? [config.agent] : config.agents || [];
  $('widget-account').textContent = config.account;
  $('widget-agents').replaceChildren(...agents.map((a) => {
    const li = el('li');
    li.append(el('span', 'agent-name', a.name));
    li.append(el('div', 'agent-meta',
      a.auth_modes.length ? `sessions: ${a.auth_modes.join(', ')}` : 'no widget sessions'));
    li.append(el('div', 'agent-meta', `“${a.greeting_message}”`));
    return li;
  }));
  $('config-section').hidden = false;
  const agent = agents.find((a) => a.auth_modes.includes('guest')) || agents[0];
  if (!agent) {
    $('widget-error').textContent = 'The widget offers no agent on this account.';
    return;
  }
  state = { clientKey, agent, session: null };
  brand(config.branding, agent);
}

/** The account's branding on the launcher and the panel (colors through the CSSOM: the
 *  page's CSP refuses inline style attributes). */
function brand(branding, agent) {
  const color = COLOR.test(branding.primary_color) ? branding.primary_color : '#0f766e';
  const position = POSITIONS.includes(branding.launcher_position) ? branding.launcher_position : 'br';
  const launcher = $('launcher');
  launcher.textContent = branding.launcher_label || 'Chat';
  launcher.style.backgroundColor = color;
  launcher.className = `launcher pos-${position}`;
  launcher.hidden = false;
  const panel = $('widget');
  panel.className = `widget pos-${position}`;
  panel.querySelector('.widget-head').style.backgroundColor = color;
  $('widget-agent-name').textContent = agent.name;
  $('widget-privacy').textContent = branding.privacy_notice || '';
}

async function startGuest() {
  const body = $('widget-body');
  if (!state.agent.auth_modes.includes('guest')) {
    body.replaceChildren(el('p', 'error',
      `${state.agent.name} does not take guests (sessions: ${state.agent.auth_modes.join(', ') || 'none'}).`));
    return;
  }
  body.replaceChildren(el('p', 'hint', 'Connecting…'));
  let result;
  try {
    result = await call('api/v1/widget/auth/guest', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ client_key: state.clientKey, agent_id: state.agent.id }),
    });
  } catch (e) {
    body.replaceChildren(el('p', 'error', `Cannot reach the server: ${e}`));
    return;
  }
  if (result.status !== 200) {
    body.replaceChildren(el('p', 'error', errorText(result)));
    return;
  }
  state.session = result.body;
  const minutes = Math.round(result.body.expires_in / 60);
  $('widget-session').textContent = `guest session · expires in ${minutes} min`;
  const token = result.body.token;
  const shown = el('p', 'token', `${result.body.token_type} ${token.slice(0, 24)}…${token.slice(-8)}`);
  shown.id = 'guest-token';
  shown.dataset.length = String(token.length);
  shown.title = 'The guest session token (a JWT for the voice gateway)';
  body.replaceChildren(el('p', 'bubble', state.agent.greeting_message), shown);
  body.dataset.session = 'guest';
}

$('launcher').addEventListener('click', async () => {
  const panel = $('widget');
  panel.hidden = !panel.hidden;
  if (!panel.hidden && state && !state.session) await startGuest();
});

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const clientKey = $('client-key').value.trim();
  if (!clientKey) {
    $('widget-error').textContent = 'A widget key is required.';
    return;
  }
  const params = new URLSearchParams(location.search);
  params.set('client_key', clientKey);
  history.replaceState(null, '', `${location.pathname}?${params}`);
  load(clientKey);
});

const initial = new URLSearchParams(location.search).get('client_key');
if (initial) {
  $('client-key').value = initial;
  load(initial);
}
