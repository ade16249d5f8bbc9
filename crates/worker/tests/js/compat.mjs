// Drives the madbase worker with @supabase/postgrest-js; exits non-zero on
// any mismatch. Env: WORKER_URL, TENANT, ANON_KEY, SERVICE_KEY, ALICE_TOKEN, ALICE, BOB.
import { PostgrestClient } from '@supabase/postgrest-js'
import assert from 'node:assert/strict'

const { WORKER_URL, TENANT, ANON_KEY, SERVICE_KEY, ALICE_TOKEN, ALICE, BOB } = process.env
const client = (key, bearer) =>
  new PostgrestClient(WORKER_URL + '/rest/v1', {
    headers: { apikey: key, 'X-Madbase-Tenant': TENANT, ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}) },
  })
const anon = client(ANON_KEY)
const service = client(SERVICE_KEY, SERVICE_KEY)
const alice = client(ANON_KEY, ALICE_TOKEN)

let checks = 0
async function check(name, fn) {
  try {
    await fn()
    checks++
  } catch (e) {
    console.error(`FAIL ${name}:`, e)
    process.exitCode = 1
  }
}
const ok = (r) => {
  assert.equal(r.error, null, JSON.stringify(r.error))
  return r
}

await check('select with embeds', async () => {
  const { data } = ok(await anon.from('posts').select('id, title, author:users(name), comments(body)').order('id'))
  assert.deepEqual(data, [
    { id: 1, title: 'Hello world', author: { name: 'alice' }, comments: [{ body: 'nice' }, { body: 'thanks' }] },
    { id: 3, title: 'Bob public', author: { name: 'bob' }, comments: [{ body: 'hi bob' }] },
  ])
  const inner = ok(await anon.from('posts').select('id, users!inner(name)').eq('users.name', 'bob'))
  assert.deepEqual(inner.data, [{ id: 3, users: { name: 'bob' } }])
  const limited = ok(
    await anon.from('posts').select('id, comments(id)').order('id').order('id', { referencedTable: 'comments', ascending: false }).limit(1, { referencedTable: 'comments' }),
  )
  assert.deepEqual(limited.data, [{ id: 1, comments: [{ id: 2 }] }, { id: 3, comments: [{ id: 3 }] }])
})

const idsOf = (r) => ok(r).data.map((x) => x.id)
await check('filters', async () => {
  const q = () => anon.from('items').select('id').order('id')
  assert.deepEqual(idsOf(await q().eq('id', 3)), [3])
  assert.deepEqual(idsOf(await q().neq('id', 3).lte('id', 4)), [1, 2, 4])
  assert.deepEqual(idsOf(await q().gt('id', 28)), [29, 30])
  assert.deepEqual(idsOf(await q().gte('id', 29)), [29, 30])
  assert.deepEqual(idsOf(await q().lt('id', 2)), [1])
  assert.deepEqual(idsOf(await q().like('name', 'item 1_')), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
  assert.deepEqual(idsOf(await q().ilike('name', 'ITEM 3%')), [3, 30])
  assert.deepEqual(idsOf(await q().in('id', [1, 5, 7])), [1, 5, 7])
  assert.deepEqual(idsOf(await q().in('code', ['c1', 'c2'])), [1, 2])
  assert.deepEqual(idsOf(await q().lt('id', 3).not('price', 'is', null)), [1, 2])
  assert.deepEqual(idsOf(await q().is('price', null)), [])
  assert.deepEqual(idsOf(await q().contains('tags', ['t1']).lt('id', 8)), [1, 4, 7])
  assert.deepEqual(idsOf(await q().containedBy('tags', ['t2', 't9']).lt('id', 6)), [2, 5])
  assert.deepEqual(idsOf(await q().overlaps('tags', ['t0', 't2']).lt('id', 6)), [2, 3, 5])
  assert.deepEqual(idsOf(await q().contains('data', { even: true }).lt('id', 5)), [2, 4])
  assert.deepEqual(idsOf(await q().eq('data->>n', '7')), [7])
  assert.deepEqual(idsOf(await q().or('id.eq.1,and(id.gt.5,id.lt.8)')), [1, 6, 7])
  assert.deepEqual(idsOf(await q().not('id', 'in', '(1,2,3)').lt('id', 6)), [4, 5])
  assert.deepEqual(idsOf(await q().match({ id: 4, name: 'item 4' })), [4])
  assert.deepEqual(idsOf(await q().filter('id', 'in', '(8,9)')), [8, 9])
  assert.deepEqual(idsOf(await q().textSearch('name', 'item & 12', { config: 'english' })), [12])
})

await check('order, range, count', async () => {
  const r = ok(await service.from('posts').select('id').order('score', { ascending: false, nullsFirst: false }).order('id'))
  assert.deepEqual(r.data.map((x) => x.id), [1, 4, 2, 3])
  const page = ok(await anon.from('items').select('id', { count: 'exact' }).order('id').range(5, 9))
  assert.deepEqual(page.data.map((x) => x.id), [6, 7, 8, 9, 10])
  assert.equal(page.count, 30)
  assert.equal(page.status, 206)
  const head = ok(await anon.from('items').select('*', { count: 'exact', head: true }).lte('id', 5))
  assert.equal(head.count, 5)
  assert.equal(head.data, null)
  const limited = ok(await anon.from('items').select('id').order('id', { ascending: false }).limit(2))
  assert.deepEqual(limited.data, [{ id: 30 }, { id: 29 }])
})

await check('insert, upsert, update, delete with returning', async () => {
  const ins = ok(await anon.from('items').insert({ id: 200, name: 'js' }).select('id, name').single())
  assert.deepEqual(ins.data, { id: 200, name: 'js' })
  assert.equal(ins.status, 201)
  const bulk = ok(await anon.from('items').insert([{ id: 201, name: 'a' }, { id: 202, name: 'b', price: 3 }]).select('id, price'))
  assert.deepEqual(bulk.data, [{ id: 201, price: null }, { id: 202, price: 3 }])
  const minimal = await anon.from('items').insert({ id: 203, name: 'min' })
  assert.equal(minimal.error, null)
  assert.equal(minimal.status, 201)
  const up = ok(await anon.from('items').upsert([{ id: 200, name: 'merged' }, { id: 204, name: 'new' }]).select('id, name').order('id'))
  assert.deepEqual(up.data, [{ id: 200, name: 'merged' }, { id: 204, name: 'new' }])
  const ign = ok(await anon.from('items').upsert({ id: 200, name: 'ignored' }, { ignoreDuplicates: true }).select('id'))
  assert.deepEqual(ign.data, [])
  const byCode = ok(await anon.from('items').upsert({ id: 205, code: 'c200', name: 'x' }, { onConflict: 'code' }).select('id'))
  assert.deepEqual(byCode.data, [{ id: 205 }])
  const upd = ok(await anon.from('items').update({ price: 1.25 }).in('id', [201, 202]).select('id, price').order('id'))
  assert.deepEqual(upd.data, [{ id: 201, price: 1.25 }, { id: 202, price: 1.25 }])
  const updMin = await anon.from('items').update({ name: 'quiet' }).eq('id', 203)
  assert.equal(updMin.error, null)
  assert.equal(updMin.status, 204)
  const del = ok(await anon.from('items').delete().gte('id', 200).select('id').order('id'))
  assert.deepEqual(del.data.map((x) => x.id), [200, 201, 202, 203, 204, 205])
  const dup = await anon.from('items').insert({ id: 1, name: 'dup' })
  assert.equal(dup.error.code, '23505')
  assert.equal(dup.status, 409)
  const mine = ok(await alice.from('posts').insert({ author_id: ALICE, title: 'from js' }).select('title, author:users(name)').single())
  assert.deepEqual(mine.data, { title: 'from js', author: { name: 'alice' } })
  const forged = await alice.from('posts').insert({ author_id: BOB, title: 'forged' })
  assert.equal(forged.error.code, '42501')
  assert.equal(forged.status, 403)
})

await check('rpc', async () => {
  assert.equal(ok(await anon.rpc('add', { a: 2, b: 3 })).data, 5)
  assert.equal(ok(await anon.rpc('add', { a: 2, b: 5 }, { get: true })).data, 7)
  const rows = ok(await service.rpc('posts_by', { author: ALICE }).select('id, title').gt('score', 6))
  assert.deepEqual(rows.data, [{ id: 1, title: 'Hello world' }])
  assert.deepEqual(ok(await anon.rpc('numbers', { n: 3 })).data, [1, 2, 3])
  const post = ok(await alice.rpc('create_post', { title: 'rpc js', public: false }))
  assert.equal(post.data.title, 'rpc js')
  const failed = await anon.rpc('fail', { msg: 'boom' })
  assert.equal(failed.error.code, 'P0001')
  assert.equal(failed.error.message, 'boom')
  const missing = await anon.rpc('nope')
  assert.equal(missing.error.code, 'PGRST202')
  assert.equal(missing.status, 404)
})

await check('single and maybeSingle', async () => {
  assert.deepEqual(ok(await anon.from('items').select('id').eq('id', 4).single()).data, { id: 4 })
  const many = await anon.from('items').select('id').lt('id', 3).single()
  assert.equal(many.error.code, 'PGRST116')
  assert.equal(many.status, 406)
  const none = await anon.from('items').select('id').eq('id', 999).single()
  assert.equal(none.error.code, 'PGRST116')
  assert.deepEqual(ok(await anon.from('items').select('id').eq('id', 5).maybeSingle()).data, { id: 5 })
  assert.equal(ok(await anon.from('items').select('id').eq('id', 999).maybeSingle()).data, null)
  const manyMaybe = await anon.from('items').select('id').lt('id', 3).maybeSingle()
  assert.equal(manyMaybe.error.code, 'PGRST116')
})

await check('errors', async () => {
  const missing = await anon.from('nope').select()
  assert.equal(missing.error.code, 'PGRST205')
  assert.equal(missing.status, 404)
  const badKey = await client('not-a-jwt').from('items').select()
  assert.equal(badKey.error.code, 'PGRST301')
  assert.equal(badKey.status, 401)
  const secret = await anon.from('secrets').select()
  assert.equal(secret.error.code, '42501')
  assert.equal(secret.status, 401)
  const rel = await anon.from('items').select('id, users(name)')
  assert.equal(rel.error.code, 'PGRST200')
})

if (process.exitCode) {
  console.error('compat: FAILED')
} else {
  console.log(`compat: ok (${checks} groups)`)
}
