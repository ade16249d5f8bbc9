// cargo xtask browser: serves page.html, page.js and supabase-js's browser
// bundle (from node_modules, nothing from a CDN) on two loopback origins,
// drives Debian's Chromium headless through playwright-core, and prints the
// page's results as one JSON line: `browser-results {...}`.
//
// Environment (set by crates/xtask/src/browser.rs):
//   MADBASE_URL   the tenant's URL on the proxy (http://127.0.0.1:B/t/<id>)
//   ANON_KEY      the tenant's anon key
//   PAGE_PORT     the allowed page origin's port (http://127.0.0.1:PAGE_PORT)
//   BLOCKED_PORT  a port whose origin madbase does not allow
//   CHROMIUM      the browser executable (default /usr/bin/chromium)
//   SCREENSHOTS   directory for screenshots of failed pages

import http from 'node:http'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { chromium } from 'playwright-core'

const here = path.dirname(fileURLToPath(import.meta.url))
const env = (name, fallback) => {
  const v = process.env[name] ?? fallback
  if (v === undefined) throw new Error(`${name} is not set`)
  return v
}
const madbase = env('MADBASE_URL')
const anonKey = env('ANON_KEY')
const pagePort = Number(env('PAGE_PORT'))
const blockedPort = Number(env('BLOCKED_PORT'))
const executablePath = env('CHROMIUM', '/usr/bin/chromium')
const screenshots = env('SCREENSHOTS', here)

const files = {
  '/': ['page.html', 'text/html; charset=utf-8'],
  '/page.js': ['page.js', 'text/javascript; charset=utf-8'],
  '/supabase.js': ['node_modules/@supabase/supabase-js/dist/umd/supabase.js', 'text/javascript; charset=utf-8'],
}

function serve(port) {
  const server = http.createServer(async (req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname]
    if (!file || req.method !== 'GET') {
      res.writeHead(404).end('not found')
      return
    }
    try {
      const body = await readFile(path.join(here, file[0]))
      res.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-store' }).end(body)
    } catch (e) {
      res.writeHead(500).end(String(e))
    }
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}

const servers = [await serve(pagePort), await serve(blockedPort)]
const madbaseOrigin = new URL(madbase).origin
const allowedOrigins = new Set([`http://127.0.0.1:${pagePort}`, `http://127.0.0.1:${blockedPort}`, madbaseOrigin])

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // CI runs as root, where Chromium's sandbox cannot start; containers
  // often have a tiny /dev/shm.
  args: [
    '--disable-dev-shm-usage',
    ...(process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : []),
  ],
})
const pages = [
  { name: 'allowed', origin: `http://127.0.0.1:${pagePort}`, expect: 'ok' },
  { name: 'blocked', origin: `http://127.0.0.1:${blockedPort}`, expect: 'blocked' },
]
const report = { chromium: browser.version(), pages: [] }
let failed = false
try {
  for (const p of pages) {
    const context = await browser.newContext()
    const page = await context.newPage()
    const foreign = []
    const consoleLines = []
    page.on('request', (r) => {
      const origin = new URL(r.url()).origin
      if (!allowedOrigins.has(origin)) foreign.push(r.url())
    })
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`))
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e}`))
    const q = new URLSearchParams({ url: madbase, key: anonKey, expect: p.expect })
    let results
    try {
      await page.goto(`${p.origin}/?${q}`)
      await page.waitForFunction(() => Array.isArray(window.__results), null, { timeout: 60_000 })
      results = await page.evaluate(() => window.__results)
    } catch (e) {
      results = [{ name: 'page', ok: false, detail: String(e) }]
    }
    if (foreign.length > 0) {
      results.push({ name: 'nothing fetched from elsewhere', ok: false, detail: foreign.join(', ') })
    } else {
      results.push({ name: 'nothing fetched from elsewhere', ok: true, detail: 'only the page origin and madbase' })
    }
    const pageFailed = results.some((r) => !r.ok)
    let screenshot = null
    if (pageFailed) {
      failed = true
      screenshot = path.join(screenshots, `browser-${p.name}.png`)
      await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {})
    }
    report.pages.push({ name: p.name, origin: p.origin, results, screenshot, console: pageFailed ? consoleLines : [] })
    await context.close()
  }
} finally {
  await browser.close()
  for (const s of servers) s.close()
}
console.log(`browser-results ${JSON.stringify(report)}`)
process.exit(failed ? 1 : 0)
