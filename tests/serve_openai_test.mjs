// `kvstash serve` through the official OpenAI client (npm `openai`, pinned by
// scripts/setup-npm.sh). Run by serve_openai_test.sh, which starts the server with --api-key and
// passes KVSTASH_BASE_URL, KVSTASH_API_KEY and KVSTASH_NPM_DIR (where `openai` is installed).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(process.env.KVSTASH_NPM_DIR + '/');
const OpenAI = require('openai');
const { APIError, AuthenticationError, BadRequestError } = OpenAI;

const baseURL = process.env.KVSTASH_BASE_URL;
const apiKey = process.env.KVSTASH_API_KEY;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const messages = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Say hello.' },
];

let failed = 0;
let passed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok: ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL: ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

let answer;
await check('chat.completions.create', async () => {
  const r = await client.chat.completions.create({
    model: 'tiny', messages, max_tokens: 8, temperature: 0,
  });
  assert.match(r.id, /^chatcmpl-[0-9a-f]{24}$/);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, 'tiny');
  assert.equal(typeof r.created, 'number');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 8);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok(r.usage.prompt_tokens_details.cached_tokens >= 0);
  answer = r.choices[0].message.content;
});

await check('chat.completions.create streamed, include_usage', async () => {
  const stream = await client.chat.completions.create({
    model: 'tiny', messages, max_tokens: 8, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let role = null;
  const ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, []);
      usage = chunk.usage;
    }
    for (const c of chunk.choices) {
      role ??= c.delta.role ?? null;
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(ids.size, 1);
  assert.equal(role, 'assistant');
  assert.equal(finish, 'length');
  assert.ok(usage, 'no usage chunk');
  assert.equal(usage.completion_tokens, 8);
  assert.equal(usage.total_tokens, usage.prompt_tokens + 8);
  assert.equal(text, answer, 'streamed text differs from the non-streamed answer');
});

await check('completions.create', async () => {
  const r = await client.completions.create({
    model: 'tiny', prompt: 'Once upon a time', max_tokens: 5, temperature: 0,
  });
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.choices[0].text, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 5);
});

await check('completions.create streamed', async () => {
  const stream = await client.completions.create({
    model: 'tiny', prompt: 'Once upon a time', max_tokens: 5, temperature: 0, stream: true,
  });
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(finish, 'length');
});

await check('models.list', async () => {
  const page = await client.models.list();
  assert.equal(page.data.length, 1);
  assert.equal(page.data[0].object, 'model');
});

await check('a bad request is an APIError with status 400', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'tiny', messages, max_tokens: -1 }),
    (e) => {
      assert.ok(e instanceof APIError, `not an APIError: ${e}`);
      assert.ok(e instanceof BadRequestError, `not a BadRequestError: ${e}`);
      assert.equal(e.status, 400);
      assert.equal(e.param, 'max_tokens');
      assert.equal(e.type, 'invalid_request_error');
      assert.match(e.message, /max_tokens/);
      return true;
    });
});

await check('n = 2 is an APIError with status 400', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'tiny', messages, n: 2 }),
    (e) => e instanceof APIError && e.status === 400 && e.param === 'n');
});

await check('a wrong apiKey is an AuthenticationError (401)', async () => {
  const wrong = new OpenAI({ baseURL, apiKey: 'wrong-key', maxRetries: 0 });
  await assert.rejects(
    wrong.chat.completions.create({ model: 'tiny', messages, max_tokens: 2 }),
    (e) => {
      assert.ok(e instanceof AuthenticationError, `not an AuthenticationError: ${e}`);
      assert.equal(e.status, 401);
      assert.equal(e.code, 'invalid_api_key');
      return true;
    });
  await assert.rejects(wrong.models.list(), (e) => e instanceof AuthenticationError);
});

console.log(`serve_openai_test: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
