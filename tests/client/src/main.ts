// A typed client generated from openapi/openapi.json (openapi-typescript → src/schema.d.ts),
// used through openapi-fetch against a running server: list, create, patch, get and delete an
// agent (and a tool on it), read typed errors (400 invalid_body with `field`, 404 not_found, 429 rate_limited with
// `limit` and Retry-After). Type errors fail `tsc`; wrong answers fail the run.
//
//     HUB_URL=… HUB_TOKEN=… HUB_ACCOUNT=… HUB_LIMITED_ACCOUNT=… node build/main.js
//
// HUB_LIMITED_ACCOUNT is an account whose per-minute limit is 1. Prints a JSON summary.

import createClient from 'openapi-fetch';

import type { components, paths } from './schema.js';

type Agent = components['schemas']['Agent'];
type ErrorBody = components['schemas']['ErrorBody'];

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

const baseUrl = env('HUB_URL');
const token = env('HUB_TOKEN');

const client = (account: string) =>
  createClient<paths>({
    baseUrl,
    headers: { Authorization: `Bearer ${token}`, 'X-Account-ID': account },
  });

const hub = client(env('HUB_ACCOUNT'));
const summary: Record<string, unknown> = {};

// List.
const listed = await hub.GET('/api/v1/agents');
check(listed.response.status === 200 && listed.data, `list: ${listed.response.status}`);
const before: Agent[] = listed.data;
summary.listed = before.length;

// Create: only `name` is required; the rest takes the documented defaults.
const created = await hub.POST('/api/v1/agents', {
  body: { name: 'Typed client agent', status: 'active', auth_mode: 'public' },
});
check(created.response.status === 201 && created.data, `create: ${created.response.status} ${JSON.stringify(created.error)}`);
const agent: Agent = created.data;
check(agent.category === 'custom', `default category: ${agent.category}`);
check(agent.llm_model === 'gpt-4o', `default llm_model: ${agent.llm_model}`);
check(agent.background_audio_volume === 0.8, `default volume: ${agent.background_audio_volume}`);
check(agent.playbooks.length === 0 && agent.faqs.length === 0, 'a new agent has no knowledge');
summary.created = { id: agent.id, status: agent.status, category: agent.category };

// Patch: only the fields sent change.
const patched = await hub.PATCH('/api/v1/agents/{id}', {
  params: { path: { id: agent.id } },
  body: { description: 'Made by the typed client', status: 'paused' },
});
check(patched.response.status === 200 && patched.data, `patch: ${patched.response.status}`);
check(patched.data.status === 'paused', `patched status: ${patched.data.status}`);
check(patched.data.name === agent.name, 'PATCH kept the name');
check(patched.data.auth_mode === 'public', 'PATCH kept auth_mode');

// Get.
const got = await hub.GET('/api/v1/agents/{id}', { params: { path: { id: agent.id } } });
check(got.data?.description === 'Made by the typed client', `get: ${JSON.stringify(got.data)}`);
summary.patched = { status: got.data.status, description: got.data.description };

// A tool with a free-form JSON schema, enabled on the agent with a free-form config: both
// are JSON objects whose members the client reads and writes.
const toolName = `typed_client_${Date.now()}`;
const tool = await hub.POST('/api/v1/tools', {
  body: {
    name: toolName,
    display_name: 'Typed client tool',
    schema: { type: 'object', properties: { queue: { type: 'string' } } },
  },
});
check(tool.response.status === 201 && tool.data, `create tool: ${tool.response.status} ${JSON.stringify(tool.error)}`);
check(tool.data.schema.type === 'object', `tool schema: ${JSON.stringify(tool.data.schema)}`);
const enabled = await hub.POST('/api/v1/agents/{id}/tools', {
  params: { path: { id: agent.id } },
  body: { tool_name: toolName, config: { queue: 'support' } },
});
check(enabled.response.status === 201 && enabled.data, `enable tool: ${enabled.response.status}`);
const queue: unknown = enabled.data.config.queue;
check(queue === 'support', `tool config: ${JSON.stringify(enabled.data.config)}`);
summary.tool = { name: enabled.data.tool_name, config: enabled.data.config };

// A typed 400: the offending field is named.
const invalid = await hub.POST('/api/v1/agents', { body: { name: 'x', background_audio_volume: 2 } });
const invalidError: ErrorBody | undefined = invalid.error;
check(invalid.response.status === 400 && invalidError, `invalid: ${invalid.response.status}`);
check(invalidError.error.code === 'invalid_body', `invalid code: ${invalidError.error.code}`);
check(invalidError.error.field === 'background_audio_volume', `invalid field: ${invalidError.error.field}`);
summary.invalid = { code: invalidError.error.code, field: invalidError.error.field };

// Delete (the tool, then the agent), then it is gone (a typed 404).
const toolDeleted = await hub.DELETE('/api/v1/tools/{id}', { params: { path: { id: toolName } } });
check(toolDeleted.response.status === 204, `delete tool: ${toolDeleted.response.status}`);
const deleted = await hub.DELETE('/api/v1/agents/{id}', { params: { path: { id: agent.id } } });
check(deleted.response.status === 204, `delete: ${deleted.response.status}`);
const gone = await hub.GET('/api/v1/agents/{id}', { params: { path: { id: agent.id } } });
check(gone.response.status === 404 && gone.error?.error.code === 'not_found', `after delete: ${gone.response.status}`);
const after = await hub.GET('/api/v1/agents');
check(after.data?.length === before.length, 'the list is back to its length');
summary.deleted = { status: deleted.response.status, then: gone.error.error.code };

// A free-form JSON answer (the widget session keys) is an object whose members can be read.
const jwks = await hub.GET('/.well-known/jwks.json');
check(jwks.response.status === 200 && Array.isArray(jwks.data?.keys), `jwks: ${JSON.stringify(jwks.data)}`);

// A typed 429 on the account whose limit is one request per minute. Fixed UTC windows: a
// minute boundary between two requests resets the count, so a few tries are allowed.
const limited = client(env('HUB_LIMITED_ACCOUNT'));
let refusal: { error: ErrorBody; retryAfter: string | null } | undefined;
for (let i = 0; i < 4 && !refusal; i++) {
  const { error, response } = await limited.GET('/api/v1/call-limits');
  if (response.status === 429 && error) {
    refusal = { error, retryAfter: response.headers.get('retry-after') };
  } else {
    check(response.status === 200, `limited account: ${response.status}`);
  }
}
check(refusal, 'the per-minute limit of 1 never answered 429');
check(refusal.error.error.code === 'rate_limited', `429 code: ${refusal.error.error.code}`);
check(refusal.error.error.limit === 'minute', `429 limit: ${refusal.error.error.limit}`);
check(Number(refusal.retryAfter) >= 1, `Retry-After: ${refusal.retryAfter}`);
summary.rate_limited = {
  code: refusal.error.error.code,
  limit: refusal.error.error.limit,
  retry_after: Number(refusal.retryAfter),
};

process.stdout.write(`${JSON.stringify(summary)}\n`);
