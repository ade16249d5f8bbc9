// Runs in headless Chromium on the page's origin; every call goes to
// madbase on another origin through supabase-js, so each one needs the
// proxy's CORS answers. Results go to window.__results (read back by
// run.mjs) and to the page (seen in the failure screenshot).
//
// ?url=<madbase tenant URL>&key=<anon key>&expect=ok|blocked

const params = new URLSearchParams(location.search)
const url = params.get('url')
const key = params.get('key')
const expect = params.get('expect') || 'ok'
const results = []
document.getElementById('origin').textContent = location.origin
document.getElementById('target').textContent = url

function check(cond, what) {
  if (!cond) throw new Error(what)
}

function same(got, want, what) {
  const a = JSON.stringify(got)
  const b = JSON.stringify(want)
  check(a === b, `${what}: got ${a}, want ${b}`)
}

async function step(name, fn) {
  try {
    const detail = await fn()
    results.push({ name, ok: true, detail: detail ?? '' })
  } catch (e) {
    results.push({ name, ok: false, detail: String(e && e.stack ? e.stack : e) })
  }
}

function client(apikey) {
  return supabase.createClient(url, apikey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  })
}

async function allowed() {
  const db = client(key)

  await step('select with filters and order', async () => {
    const { data, error, status } = await db
      .from('todos')
      .select('id, title, done')
      .eq('done', false)
      .gte('id', 2)
      .order('id', { ascending: false })
    check(!error, `error ${JSON.stringify(error)}`)
    same(status, 200, 'status')
    same(data, [
      { id: 4, title: 'sleep', done: false },
      { id: 3, title: 'ship it', done: false },
    ], 'rows')
    return `${data.length} rows`
  })

  await step('insert with return=representation', async () => {
    const { data, error, status } = await db
      .from('todos')
      .insert({ title: 'from the browser' })
      .select('id, title, done')
    check(!error, `error ${JSON.stringify(error)}`)
    same(status, 201, 'status')
    check(Array.isArray(data) && data.length === 1, `data ${JSON.stringify(data)}`)
    same(data[0].title, 'from the browser', 'title')
    same(data[0].done, false, 'done')
    check(Number.isInteger(data[0].id) && data[0].id > 4, `id ${data[0].id}`)
    return `id ${data[0].id}`
  })

  await step('rpc', async () => {
    const { data, error, status } = await db.rpc('add', { a: 2, b: 40 })
    check(!error, `error ${JSON.stringify(error)}`)
    same(status, 200, 'status')
    same(data, 42, 'result')
    return `add(2, 40) = ${data}`
  })

  await step("a 401 error's JSON is readable", async () => {
    const { data, error, status } = await client('not-a-key').from('todos').select('id')
    same(data, null, 'data')
    same(status, 401, 'status')
    check(error, 'an error')
    // Without CORS headers on the 401, fetch fails and supabase-js reports
    // a TypeError with no code.
    same(error.code, 'invalid_api_key', 'code')
    check(typeof error.message === 'string' && error.message.length > 0, 'message')
    return `${status} ${error.code}: ${error.message}`
  })

  await step("count: 'exact' (Content-Range exposed)", async () => {
    const { data, count, error, status } = await db
      .from('todos')
      .select('id', { count: 'exact' })
      .order('id')
      .range(0, 1)
    check(!error, `error ${JSON.stringify(error)}`)
    same(status, 206, 'status')
    same(data.map((r) => r.id), [1, 2], 'rows')
    same(count, 5, 'count')
    return `count ${count}`
  })

  await step("count: 'exact', head: true", async () => {
    const { data, count, error } = await db
      .from('todos')
      .select('*', { count: 'exact', head: true })
      .eq('done', false)
    check(!error, `error ${JSON.stringify(error)}`)
    same(data, null, 'data')
    same(count, 4, 'count')
    return `count ${count}`
  })

  // functions.invoke: a cross-origin POST (the function answers the
  // preflight and sets CORS itself, as Supabase's examples do); supabase-js
  // sends the anon key as the bearer JWT the function's verify_jwt checks.
  await step('functions.invoke', async () => {
    const { data, error } = await db.functions.invoke('greet', { body: { name: 'browser' } })
    check(!error, `error ${error && error.message} ${error && error.context && error.context.status}`)
    same(data, { message: 'Hello browser!', authorized: true }, 'data')
    return data.message
  })

  await step("functions.invoke: the function's 400 is a FunctionsHttpError", async () => {
    const { data, error } = await db.functions.invoke('greet', { body: {} })
    same(data, null, 'data')
    check(error, 'an error')
    same(error.name, 'FunctionsHttpError', 'error name')
    same(error.context.status, 400, 'status')
    same(await error.context.json(), { error: 'name is required' }, 'body')
    return `${error.name} ${error.context.status}`
  })
}

async function blocked() {
  // This origin is not allowed: the browser must refuse to hand over the
  // response (supabase-js reports the fetch failure, with no status).
  await step('a disallowed origin is blocked by the browser', async () => {
    const { data, error, status } = await client(key).from('todos').select('id')
    same(data, null, 'data')
    check(error, 'an error')
    check(!status, `status ${status} reached the page`)
    check(/fetch/i.test(`${error.message} ${error.details}`), `error ${JSON.stringify(error)}`)
    return `${error.message}`
  })
}

;(async () => {
  try {
    check(typeof supabase === 'object' && typeof supabase.createClient === 'function', 'the supabase-js bundle loaded')
    await (expect === 'blocked' ? blocked() : allowed())
  } catch (e) {
    results.push({ name: 'page', ok: false, detail: String(e && e.stack ? e.stack : e) })
  }
  document.getElementById('log').textContent = results
    .map((r) => `${r.ok ? (r.skipped ? 'SKIP' : 'PASS') : 'FAIL'} ${r.name}: ${r.detail}`)
    .join('\n')
  window.__results = results
})()
