// cargo xtask browser, part 2: the operator console (/console on control)
// in headless Chromium through playwright-core: sign in, create a tenant,
// run SQL creating a table, see it in the table browser, add and edit a
// row, deploy a function (and run it through the proxy when the functions
// service answers, then see that invocation and its console line on the
// functions page), rotate keys, change settings, look at health (each
// service's /ready and its charts), delete the tenant, sign out. Saves a screenshot of each page and prints the
// results as one JSON line: `console-results {...}`.
//
// Environment (set by crates/xtask/src/browser.rs):
//   CONTROL_URL        control's API origin (http://127.0.0.1:C)
//   PROXY_URL          the proxy's origin
//   CONSOLE_PASSWORD   MADBASE_CONSOLE_PASSWORD of that control
//   CHROMIUM           the browser executable (default /usr/bin/chromium)
//   SCREENSHOTS        directory for console-<page>.png

import path from 'node:path'
import { chromium } from 'playwright-core'

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback
  if (v === undefined) throw new Error(`${name} is not set`)
  return v
}
const control = env('CONTROL_URL')
const proxy = env('PROXY_URL')
const password = env('CONSOLE_PASSWORD')
const executablePath = env('CHROMIUM', '/usr/bin/chromium')
const screenshots = env('SCREENSHOTS', '.')

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--disable-dev-shm-usage',
    ...(process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : []),
  ],
})
const version = browser.version()
const results = []
const consoleLines = []
const foreign = []
const shots = []
let failed = false
const record = (name, ok, detail) => {
  results.push({ name, ok, detail })
  if (!ok) failed = true
}
const skip = (name, detail) => results.push({ name, ok: true, skipped: true, detail })

const context = await browser.newContext({ viewport: { width: 1200, height: 800 } })
const page = await context.newPage()
page.on('request', (r) => {
  if (new URL(r.url()).origin !== control) foreign.push(r.url())
})
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`))
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e}`))

async function shot(name) {
  const file = path.join(screenshots, `console-${name}.png`)
  await page.screenshot({ path: file, fullPage: true })
  shots.push(file)
}
// Clicks a submit button and waits for the page it leads to.
async function submit(locator) {
  await Promise.all([page.waitForNavigation(), locator.click()])
}
const flash = async () => (await page.locator('.flash').allTextContents()).join(' | ')
const expect = (cond, what) => {
  if (!cond) throw new Error(what)
}

const id = `walk-${Date.now().toString(36)}`
let anonKey = ''
let ran = false
const steps = [
  ['sign in with the console password', async () => {
    await page.goto(`${control}/console/tenants`)
    expect(page.url().endsWith('/console/signin'), `not sent to sign-in: ${page.url()}`)
    const focused = await page.evaluate(() => document.activeElement?.id)
    expect(focused === 'secret', `the password field has not the focus (${focused})`)
    await shot('signin')
    await page.keyboard.type('wrong password')
    await submit(page.getByRole('button', { name: 'Sign in' }))
    expect((await flash()).includes('not the console password'), 'a wrong password is refused')
    await page.getByLabel(/password/i).fill(password)
    await submit(page.getByRole('button', { name: 'Sign in' }))
    expect(page.url().endsWith('/console/tenants'), `signed in at ${page.url()}`)
    return 'a wrong one refused, the right one signs in'
  }],
  ['create a tenant', async () => {
    await page.getByLabel('Tenant ID').fill(id)
    await submit(page.getByRole('button', { name: 'Create tenant' }))
    expect((await flash()).includes(`Tenant ${id} created.`), await flash())
    const anon = await page.locator('#anon-key').inputValue()
    expect(anon.startsWith('ey'), 'the anon key is shown')
    anonKey = anon
    await shot('tenant')
    await page.getByRole('link', { name: 'Tenants', exact: true }).first().click()
    await page.waitForURL(/\/console\/tenants$/)
    expect(await page.getByRole('link', { name: id }).isVisible(), 'listed')
    await shot('tenants')
    await page.getByRole('link', { name: id }).click()
    await page.waitForURL(new RegExp(`/console/tenants/${id}$`))
    return id
  }],
  ['run SQL creating a table', async () => {
    await page.getByRole('link', { name: 'SQL', exact: true }).click()
    await page.getByLabel(/SQL/).fill(
      "create table notes (id serial primary key, body text not null, pinned boolean not null default false);\n" +
      "insert into notes (body) values ('first note'), ('<b>not bold</b>');\n" +
      'select id, body, pinned from notes order by id')
    await submit(page.getByRole('button', { name: 'Run' }))
    expect((await flash()).includes('2 rows'), await flash())
    expect(await page.getByRole('cell', { name: '<b>not bold</b>' }).isVisible(), 'markup shown as text')
    await shot('sql')
    return '2 rows, markup shown as text'
  }],
  ['see it in the table browser and add a row', async () => {
    await page.getByRole('link', { name: 'Tables', exact: true }).click()
    await page.getByRole('link', { name: 'notes', exact: true }).click()
    await page.waitForURL(/rows\?table=notes/)
    expect(await page.getByRole('cell', { name: 'first note' }).isVisible(), 'rows shown')
    await page.locator('input[name="v.body"]').fill('added in the browser')
    await submit(page.getByRole('button', { name: 'Add row' }))
    expect((await flash()).includes('Row added.'), await flash())
    expect(await page.getByRole('cell', { name: 'added in the browser' }).isVisible(), 'new row shown')
    await shot('table')
    return 'notes: 3 rows'
  }],
  ['edit a row', async () => {
    await page.getByRole('link', { name: 'Edit' }).first().click()
    await page.waitForURL(/rows\/edit/)
    await page.getByLabel(/^body/).fill('first note, edited')
    await submit(page.getByRole('button', { name: 'Save row' }))
    expect((await flash()).includes('Row saved.'), await flash())
    expect(await page.getByRole('cell', { name: 'first note, edited' }).isVisible(), 'edited row shown')
    await page.getByRole('link', { name: /^body/ }).click()
    await page.waitForURL(/sort=body/)
    return 'saved, sorted by body'
  }],
  ['deploy a function', async () => {
    await page.getByRole('link', { name: 'Functions', exact: true }).click()
    await page.getByLabel('Name').fill('hello')
    await page.getByLabel(/Source/).fill(
      "Deno.serve((req) => { console.log('walkthrough says <hi>'); return new Response(JSON.stringify({ hello: 'console' }), { headers: { 'content-type': 'application/json' } }) });")
    await page.getByLabel(/Require a valid JWT/).uncheck()
    await submit(page.getByRole('button', { name: 'Deploy' }))
    expect((await flash()).includes('Function hello deployed (version 1).'), await flash())
    await shot('functions')
    return 'version 1'
  }],
  ['run the function through the proxy', async () => {
    const resp = await fetch(`${proxy}/t/${id}/functions/v1/hello`, {
      method: 'POST',
      headers: { apikey: anonKey, authorization: `Bearer ${anonKey}` },
    }).catch((e) => e)
    if (!(resp instanceof Response) || resp.status !== 200) {
      const why = resp instanceof Response ? `${resp.status} ${await resp.text()}` : String(resp)
      return { skip: `the functions service does not run it yet (${why.slice(0, 200)})` }
    }
    const body = await resp.json()
    expect(body.hello === 'console', JSON.stringify(body))
    ran = true
    return '200 {"hello":"console"}'
  }],
  ['the invocation and its console line on the functions page', async () => {
    if (!ran) return { skip: 'the function did not run' }
    // Recorded when the invocation ends, which may be just after its answer.
    let summary = ''
    for (let i = 0; i < 10 && !summary.includes('1 recent'); i++) {
      if (i > 0) await page.waitForTimeout(500)
      await page.goto(`${control}/console/tenants/${id}/functions`)
      summary = await page.locator('details.invocations summary').first().textContent()
    }
    expect(summary.includes('1 recent'), `summary: ${summary}`)
    const lines = await page.locator('pre.console').first().textContent()
    expect(lines.includes('info: walkthrough says <hi>'), `console lines: ${lines}`)
    const badge = await page.locator('ol.invocations .badge').first().textContent()
    expect(badge.trim() === '200', `status ${badge}`)
    await shot('invocations')
    return `200, "${lines.trim()}"`
  }],
  ['rotate keys', async () => {
    await page.getByRole('link', { name: 'Overview', exact: true }).click()
    await page.waitForURL(new RegExp(`/console/tenants/${id}$`))
    await submit(page.getByRole('button', { name: 'Rotate keys' }))
    expect((await flash()).includes('Keys rotated (version 2)'), await flash())
    return 'key version 2'
  }],
  ['change settings', async () => {
    await page.getByRole('link', { name: 'Settings', exact: true }).click()
    await page.getByLabel('These origins:').check()
    await page.getByLabel(/Origins, one a line/).fill('https://app.example.com')
    await submit(page.getByRole('button', { name: 'Save settings' }))
    expect((await flash()).includes('Settings saved.'), await flash())
    await shot('settings')
    return 'CORS origins saved'
  }],
  ['platform health', async () => {
    await page.getByRole('link', { name: 'Health', exact: true }).click()
    await page.waitForURL(/\/console\/health$/)
    const ok = await page.locator('.badge.ok').count()
    const failing = await page.locator('.badge.error').count()
    expect(ok === 6 && failing === 0, `${ok} ready, ${failing} failing (want 6 and 0)`)
    // Charts need two scrapes (every 15 s from control's start).
    const deadline = Date.now() + 45_000
    let charts = 0
    for (;;) {
      charts = await page.locator('table.traffic svg.chart').count()
      if (charts >= 12 || Date.now() > deadline) break
      await page.waitForTimeout(2_000)
      await page.reload()
    }
    expect(charts >= 12, `${charts} charts (want 3 for each of the four services)`)
    const rates = await page.locator('table.traffic th[scope=row] + td .figure').allTextContents()
    expect(rates.length === 4 && rates.every((r) => r.endsWith('/s')), `rates: ${rates.join(', ')}`)
    await shot('health')
    return `six ready checks; ${charts} charts; requests/s ${rates.join(', ')}`
  }],
  ['dark mode and a phone screen', async () => {
    await page.emulateMedia({ colorScheme: 'dark' })
    await page.goto(`${control}/console/tenants/${id}/sql`)
    await page.getByLabel(/SQL/).fill('select id, body, pinned from notes order by id')
    await submit(page.getByRole('button', { name: 'Run' }))
    const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor)
    expect(bg !== 'rgb(255, 255, 255)', `dark background (${bg})`)
    await shot('sql-dark')
    await page.setViewportSize({ width: 390, height: 844 })
    await page.goto(`${control}/console/tenants`)
    const wide = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1)
    expect(!wide, 'no horizontal scrolling on a phone')
    await shot('tenants-phone')
    await page.setViewportSize({ width: 1200, height: 800 })
    await page.emulateMedia({ colorScheme: 'light' })
    return `background ${bg}`
  }],
  ['delete the tenant', async () => {
    await page.goto(`${control}/console/tenants/${id}`)
    await page.getByLabel(/to delete the tenant/).fill(id)
    await submit(page.getByRole('button', { name: 'Delete tenant' }))
    expect((await flash()).includes(`Tenant ${id} deleted.`), await flash())
    expect((await page.getByRole('link', { name: id }).count()) === 0, 'no longer listed')
    return 'gone'
  }],
  ['sign out', async () => {
    await submit(page.getByRole('button', { name: 'Sign out' }))
    await page.goto(`${control}/console/tenants`)
    expect(page.url().endsWith('/console/signin'), 'signed out')
    return 'back at sign-in'
  }],
]

try {
  for (const [name, run] of steps) {
    if (failed) {
      record(name, false, 'not run: an earlier step failed')
      continue
    }
    try {
      const out = await run()
      if (out && out.skip) skip(name, out.skip)
      else record(name, true, String(out ?? ''))
    } catch (e) {
      record(name, false, String(e).slice(0, 500))
      await shot('failed').catch(() => {})
    }
  }
  // The deliberately wrong password is answered 401, which Chromium logs.
  const errors = consoleLines.filter((l) => (l.startsWith('error') || l.startsWith('pageerror')) &&
    !l.includes('status of 401 (Unauthorized)'))
  record('no page errors (CSP, JavaScript)', errors.length === 0, errors.join('; ') || 'none')
  record('nothing fetched from elsewhere', foreign.length === 0, foreign.join(', ') || `only ${control}`)
} finally {
  await browser.close()
}
const report = {
  chromium: version,
  pages: [{ name: 'console', origin: control, results, screenshot: shots.join(', '), console: failed ? consoleLines : [] }],
}
console.log(`console-results ${JSON.stringify(report)}`)
process.exit(failed ? 1 : 0)
