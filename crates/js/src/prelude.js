// madbase's JavaScript prelude: the Web APIs a Supabase edge function uses,
// written for this runtime (see ARCHITECTURE.md, "Functions runtime").
//
// Evaluated once per runtime, before the tenant's module, as a script whose
// value is a function: Rust calls it with `native` (the Rust helpers) and
// keeps the returned `internal` object. Neither is reachable from globals.
(function (native) {
  "use strict";

  const internal = {};
  const g = globalThis;
  function define(name, value) {
    Object.defineProperty(g, name, {
      value,
      writable: true,
      configurable: true,
      enumerable: false,
    });
  }
  function wellFormed(s) {
    s = String(s);
    return typeof s.toWellFormed === "function" ? s.toWellFormed() : s;
  }

  // ---------------------------------------------------------------- errors
  if (typeof g.DOMException !== "function") {
    const codes = {
      IndexSizeError: 1,
      NotFoundError: 8,
      NotSupportedError: 9,
      InvalidStateError: 11,
      SyntaxError: 12,
      InvalidCharacterError: 5,
      NetworkError: 19,
      AbortError: 20,
      TimeoutError: 23,
      DataCloneError: 25,
      QuotaExceededError: 22,
    };
    class DOMException extends Error {
      constructor(message = "", name = "Error") {
        super(String(message));
        Object.defineProperty(this, "name", {
          value: String(name),
          configurable: true,
          writable: true,
        });
      }
      get code() {
        return codes[this.name] || 0;
      }
    }
    define("DOMException", DOMException);
  }

  /** Rejections that count as FunctionError::FetchLimit when uncaught. */
  class FetchLimitError extends TypeError {
    constructor(message) {
      super(message);
      Object.defineProperty(this, "name", {
        value: "TypeError",
        configurable: true,
        writable: true,
      });
    }
  }

  // --------------------------------------------------------------- console
  function inspect(v, depth, seen) {
    switch (typeof v) {
      case "string":
        return depth === 0 ? v : JSON.stringify(v);
      case "number":
      case "boolean":
      case "undefined":
        return String(v);
      case "bigint":
        return `${v}n`;
      case "symbol":
        return v.toString();
      case "function":
        return `[Function: ${v.name || "(anonymous)"}]`;
    }
    if (v === null) return "null";
    if (v instanceof Error) {
      return v.stack ? `${v.name}: ${v.message}\n${v.stack}`.trimEnd() : `${v.name}: ${v.message}`;
    }
    if (seen.includes(v)) return "[Circular]";
    if (depth > 3) return Array.isArray(v) ? "[Array]" : "[Object]";
    seen = seen.concat([v]);
    if (Array.isArray(v)) {
      return `[ ${v.map((x) => inspect(x, depth + 1, seen)).join(", ")} ]`;
    }
    if (v instanceof Date) return v.toISOString();
    if (v instanceof RegExp) return String(v);
    if (v instanceof Map) {
      const items = [...v].map(([k, x]) => `${inspect(k, depth + 1, seen)} => ${inspect(x, depth + 1, seen)}`);
      return `Map(${v.size}) { ${items.join(", ")} }`;
    }
    if (v instanceof Set) {
      return `Set(${v.size}) { ${[...v].map((x) => inspect(x, depth + 1, seen)).join(", ")} }`;
    }
    if (ArrayBuffer.isView(v)) {
      return `${v.constructor.name}(${v.length}) [ ${Array.prototype.slice.call(v, 0, 50).join(", ")} ]`;
    }
    if (typeof v.then === "function") return "Promise { <pending> }";
    const keys = Object.keys(v);
    const name = v.constructor && v.constructor !== Object && v.constructor.name ? `${v.constructor.name} ` : "";
    if (keys.length === 0) return `${name}{}`;
    const body = keys.map((k) => `${/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k)}: ${inspect(v[k], depth + 1, seen)}`);
    return `${name}{ ${body.join(", ")} }`;
  }
  function format(args) {
    let first = args[0];
    let rest = args.slice(1);
    let out = "";
    if (typeof first === "string" && first.includes("%") && rest.length > 0) {
      out = first.replace(/%([sdifoOjc%])/g, (m, c) => {
        if (c === "%") return "%";
        if (rest.length === 0) return m;
        const a = rest.shift();
        switch (c) {
          case "s":
            return typeof a === "string" ? a : inspect(a, 1, []);
          case "d":
          case "i":
            return String(c === "i" ? parseInt(a) : Number(a));
          case "f":
            return String(parseFloat(a));
          case "c":
            return "";
          default:
            return inspect(a, 1, []);
        }
      });
      first = undefined;
    } else {
      rest = args;
    }
    const parts = rest.map((a) => inspect(a, 0, []));
    if (first === undefined && out !== "") parts.unshift(out);
    return parts.join(" ");
  }
  const consoleObject = {};
  for (const [method, level] of [
    ["log", "info"],
    ["info", "info"],
    ["warn", "warn"],
    ["error", "error"],
    ["debug", "debug"],
    ["trace", "debug"],
  ]) {
    consoleObject[method] = (...args) => native.log(level, wellFormed(format(args)));
  }
  consoleObject.dir = (v) => native.log("info", wellFormed(inspect(v, 1, [])));
  consoleObject.table = consoleObject.log;
  const timers_ = new Map();
  const counts = new Map();
  consoleObject.time = (label = "default") => timers_.set(String(label), performance.now());
  function timeLog(label) {
    const start = timers_.get(label);
    if (start === undefined) return native.log("warn", wellFormed(`Timer '${label}' does not exist`));
    native.log("info", wellFormed(`${label}: ${(performance.now() - start).toFixed(3)}ms`));
  }
  consoleObject.timeLog = (label = "default") => timeLog(String(label));
  consoleObject.timeEnd = (label = "default") => {
    timeLog(String(label));
    timers_.delete(String(label));
  };
  consoleObject.count = (label = "default") => {
    label = String(label);
    const n = (counts.get(label) || 0) + 1;
    counts.set(label, n);
    native.log("info", wellFormed(`${label}: ${n}`));
  };
  consoleObject.countReset = (label = "default") => counts.delete(String(label));
  consoleObject.group = consoleObject.groupCollapsed = (...args) => {
    if (args.length) consoleObject.log(...args);
  };
  consoleObject.groupEnd = () => {};
  consoleObject.assert = (cond, ...args) => {
    if (!cond) native.log("error", wellFormed(`Assertion failed${args.length ? ": " + format(args) : ""}`));
  };
  define("console", consoleObject);

  // ----------------------------------------------------------------- bytes
  function bytesOf(x) {
    if (x instanceof Uint8Array) return x;
    if (x instanceof ArrayBuffer) return new Uint8Array(x);
    if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    return null;
  }
  // Rust reads bytes as a "binary string": one char (0..=255) per byte.
  function latin1(u8) {
    let s = "";
    for (let i = 0; i < u8.length; i += 8192) {
      s += String.fromCharCode.apply(null, u8.subarray(i, i + 8192));
    }
    return s;
  }
  function utf8Encode(s) {
    return native.utf8Encode(wellFormed(s));
  }
  function utf8Decode(u8, fatal, ignoreBOM) {
    return native.utf8Decode(latin1(u8), !!fatal, !!ignoreBOM);
  }

  class TextEncoder {
    get encoding() {
      return "utf-8";
    }
    encode(input = "") {
      return utf8Encode(input);
    }
    encodeInto(source, destination) {
      const bytes = utf8Encode(source);
      // Only whole code points fit: back off to a UTF-8 boundary.
      let n = Math.min(bytes.length, destination.length);
      while (n > 0 && n < bytes.length && (bytes[n] & 0xc0) === 0x80) n--;
      destination.set(bytes.subarray(0, n));
      const read = native.utf8Decode(latin1(bytes.subarray(0, n)), false, true).length;
      return { read, written: n };
    }
  }
  class TextDecoder {
    #fatal;
    #ignoreBOM;
    #pending = new Uint8Array(0);
    #started = false;
    constructor(label = "utf-8", options = {}) {
      const l = String(label).trim().toLowerCase();
      if (l !== "utf-8" && l !== "utf8" && l !== "unicode-1-1-utf-8") {
        throw new RangeError(`The encoding label provided ('${label}') is not supported`);
      }
      this.#fatal = !!(options && options.fatal);
      this.#ignoreBOM = !!(options && options.ignoreBOM);
    }
    get encoding() {
      return "utf-8";
    }
    get fatal() {
      return this.#fatal;
    }
    get ignoreBOM() {
      return this.#ignoreBOM;
    }
    decode(input, options) {
      const stream = !!(options && options.stream);
      let u8 = input === undefined ? new Uint8Array(0) : bytesOf(input);
      if (!u8) throw new TypeError("TextDecoder.decode: input must be a BufferSource");
      if (this.#pending.length > 0) {
        const joined = new Uint8Array(this.#pending.length + u8.length);
        joined.set(this.#pending);
        joined.set(u8, this.#pending.length);
        u8 = joined;
        this.#pending = new Uint8Array(0);
      }
      let cut = u8.length;
      if (stream) {
        // Keep an incomplete UTF-8 sequence at the end for the next call.
        let i = u8.length - 1;
        while (i >= 0 && u8.length - i <= 3 && (u8[i] & 0xc0) === 0x80) i--;
        if (i >= 0) {
          const lead = u8[i];
          const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
          if (need > u8.length - i) cut = i;
        }
        this.#pending = u8.slice(cut);
      }
      // A BOM is only stripped at the start of a stream.
      const out = utf8Decode(u8.subarray(0, cut), this.#fatal, this.#ignoreBOM || this.#started);
      if (cut > 0) this.#started = true;
      if (!stream) this.#started = false;
      return out;
    }
  }
  define("TextEncoder", TextEncoder);
  define("TextDecoder", TextDecoder);

  // ------------------------------------------------------------ atob, btoa
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const B64_INDEX = {};
  for (let i = 0; i < 64; i++) B64_INDEX[B64[i]] = i;
  function btoa(data) {
    if (arguments.length === 0) throw new TypeError("btoa: 1 argument required");
    const s = String(data);
    let out = "";
    for (let i = 0; i < s.length; i += 3) {
      const a = s.charCodeAt(i);
      const b = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      const c = i + 2 < s.length ? s.charCodeAt(i + 2) : 0;
      if (a > 255 || b > 255 || c > 255) {
        throw new DOMException("btoa: the string contains characters outside of the Latin1 range", "InvalidCharacterError");
      }
      const n = (a << 16) | (b << 8) | c;
      out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
      out += i + 1 < s.length ? B64[(n >> 6) & 63] : "=";
      out += i + 2 < s.length ? B64[n & 63] : "=";
    }
    return out;
  }
  function atob(data) {
    if (arguments.length === 0) throw new TypeError("atob: 1 argument required");
    let s = String(data).replace(/[\t\n\f\r ]/g, "");
    if (s.length % 4 === 0) s = s.replace(/==?$/, "");
    if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s)) {
      throw new DOMException("atob: the string to be decoded is not correctly encoded", "InvalidCharacterError");
    }
    let out = "";
    let buffer = 0;
    let bits = 0;
    for (let i = 0; i < s.length; i++) {
      buffer = (buffer << 6) | B64_INDEX[s[i]];
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out += String.fromCharCode((buffer >> bits) & 0xff);
      }
    }
    return out;
  }
  define("btoa", btoa);
  define("atob", atob);

  // ---------------------------------------------------------------- crypto
  const INTEGER_ARRAYS = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array];
  if (typeof BigInt64Array === "function") INTEGER_ARRAYS.push(BigInt64Array, BigUint64Array);
  const cryptoObject = {
    getRandomValues(array) {
      if (!INTEGER_ARRAYS.some((T) => array instanceof T)) {
        throw new DOMException("getRandomValues: the array is not an integer typed array", "TypeMismatchError");
      }
      if (array.byteLength > 65536) {
        throw new DOMException(
          `getRandomValues: the ArrayBufferView's byte length (${array.byteLength}) exceeds 65536`,
          "QuotaExceededError",
        );
      }
      new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(native.randomBytes(array.byteLength));
      return array;
    },
    randomUUID() {
      const b = native.randomBytes(16);
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      let h = "";
      for (let i = 0; i < 16; i++) {
        h += (b[i] < 16 ? "0" : "") + b[i].toString(16);
        if (i === 3 || i === 5 || i === 7 || i === 9) h += "-";
      }
      return h;
    },
  };
  // crypto.subtle: digest (SHA-1/256/384/512) and HMAC keys (raw import,
  // generate, export, sign, verify). Other algorithms are NotSupportedError.
  function hashName(h) {
    const n = String(typeof h === "object" && h !== null ? h.name : h).toUpperCase();
    const map = { "SHA-1": "SHA-1", "SHA-256": "SHA-256", "SHA-384": "SHA-384", "SHA-512": "SHA-512", SHA1: "SHA-1", SHA256: "SHA-256", SHA384: "SHA-384", SHA512: "SHA-512" };
    if (!map[n]) throw new DOMException(`Unrecognized hash: ${n}`, "NotSupportedError");
    return map[n];
  }
  function algoName(a) {
    return String(typeof a === "object" && a !== null ? a.name : a).toUpperCase();
  }
  function sourceBytes(data, what) {
    const u8 = bytesOf(data);
    if (!u8) throw new TypeError(`${what}: expected a BufferSource`);
    return u8;
  }
  const HMAC_BLOCK = { "SHA-1": 512, "SHA-256": 512, "SHA-384": 1024, "SHA-512": 1024 };
  const KEY_SECRET = Symbol("key");
  class CryptoKey {
    constructor(key) {
      if (key !== KEY_SECRET) throw new TypeError("Illegal constructor");
    }
  }
  function hmacKey(raw, hash, extractable, usages) {
    const key = new CryptoKey(KEY_SECRET);
    Object.defineProperties(key, {
      type: { value: "secret", enumerable: true },
      extractable: { value: !!extractable, enumerable: true },
      algorithm: { value: { name: "HMAC", hash: { name: hash }, length: raw.length * 8 }, enumerable: true },
      usages: { value: [...usages], enumerable: true },
    });
    Object.defineProperty(key, KEY_SECRET, { value: raw.slice() });
    return key;
  }
  function checkHmacKey(key, usage) {
    if (!(key instanceof CryptoKey) || key.algorithm.name !== "HMAC") {
      throw new DOMException("The key is not an HMAC key", "InvalidAccessError");
    }
    if (!key.usages.includes(usage)) throw new DOMException(`The key does not allow ${usage}`, "InvalidAccessError");
  }
  const subtle = {
    async digest(algorithm, data) {
      return native.digest(hashName(algorithm), latin1(sourceBytes(data, "digest"))).buffer;
    },
    async importKey(format, keyData, algorithm, extractable, usages) {
      if (algoName(algorithm) !== "HMAC") throw new DOMException(`importKey: unsupported algorithm ${algoName(algorithm)}`, "NotSupportedError");
      if (format !== "raw") throw new DOMException(`importKey: unsupported format ${format}`, "NotSupportedError");
      const raw = sourceBytes(keyData, "importKey");
      if (raw.length === 0) throw new DOMException("importKey: empty HMAC key", "DataError");
      return hmacKey(raw, hashName(algorithm.hash), extractable, usages || []);
    },
    async generateKey(algorithm, extractable, usages) {
      if (algoName(algorithm) !== "HMAC") throw new DOMException(`generateKey: unsupported algorithm ${algoName(algorithm)}`, "NotSupportedError");
      const hash = hashName(algorithm.hash);
      const bits = algorithm.length || HMAC_BLOCK[hash];
      return hmacKey(native.randomBytes(Math.ceil(bits / 8)), hash, extractable, usages || []);
    },
    async exportKey(format, key) {
      if (format !== "raw") throw new DOMException(`exportKey: unsupported format ${format}`, "NotSupportedError");
      if (!key.extractable) throw new DOMException("The key is not extractable", "InvalidAccessError");
      return key[KEY_SECRET].slice().buffer;
    },
    async sign(algorithm, key, data) {
      if (algoName(algorithm) !== "HMAC") throw new DOMException(`sign: unsupported algorithm ${algoName(algorithm)}`, "NotSupportedError");
      checkHmacKey(key, "sign");
      return native.hmacSign(key.algorithm.hash.name, latin1(key[KEY_SECRET]), latin1(sourceBytes(data, "sign"))).buffer;
    },
    async verify(algorithm, key, signature, data) {
      if (algoName(algorithm) !== "HMAC") throw new DOMException(`verify: unsupported algorithm ${algoName(algorithm)}`, "NotSupportedError");
      checkHmacKey(key, "verify");
      return native.hmacVerify(
        key.algorithm.hash.name,
        latin1(key[KEY_SECRET]),
        latin1(sourceBytes(signature, "verify")),
        latin1(sourceBytes(data, "verify")),
      );
    },
  };
  for (const name of ["encrypt", "decrypt", "deriveBits", "deriveKey", "wrapKey", "unwrapKey"]) {
    subtle[name] = async () => {
      throw new DOMException(`crypto.subtle.${name} is not supported`, "NotSupportedError");
    };
  }
  cryptoObject.subtle = subtle;
  define("CryptoKey", CryptoKey);
  define("crypto", cryptoObject);

  // ---------------------------------------------------------------- timers
  let nextTimerId = 1;
  const timers = new Map(); // id -> { due, seq, fn, args, interval }
  let timerSeq = 0;
  function addTimer(fn, delay, args, repeat) {
    const id = nextTimerId++;
    // WebIDL `long`: ToInt32 (2 ** 31 wraps negative), then negative → 0.
    let ms = Number(delay) | 0;
    if (ms < 0) ms = 0;
    if (typeof fn !== "function") {
      const code = String(fn);
      fn = () => {
        throw new TypeError(`timers: string callbacks are not supported (${code.slice(0, 40)})`);
      };
    }
    timers.set(id, { due: Date.now() + ms, seq: timerSeq++, fn, args, interval: repeat ? Math.max(ms, 1) : -1 });
    return id;
  }
  function clearTimer(id) {
    timers.delete(Number(id));
  }
  define("setTimeout", (fn, delay, ...args) => addTimer(fn, delay, args, false));
  define("setInterval", (fn, delay, ...args) => addTimer(fn, delay, args, true));
  define("clearTimeout", clearTimer);
  define("clearInterval", clearTimer);
  if (typeof g.queueMicrotask !== "function") {
    define("queueMicrotask", (fn) => {
      if (typeof fn !== "function") throw new TypeError("queueMicrotask: callback is not a function");
      Promise.resolve().then(() => fn());
    });
  }
  function earliestTimer() {
    let best = null;
    let bestId = 0;
    for (const [id, t] of timers) {
      if (best === null || t.due < best.due || (t.due === best.due && t.seq < best.seq)) {
        best = t;
        bestId = id;
      }
    }
    return best === null ? null : [bestId, best];
  }
  /** Milliseconds until the next timer is due (0 when due), -1 when none. */
  internal.nextTimer = () => {
    const e = earliestTimer();
    if (e === null) return -1;
    return Math.max(0, e[1].due - Date.now());
  };
  /** Runs the earliest timer when it is due; a throwing callback is logged. */
  internal.runTimer = () => {
    const e = earliestTimer();
    if (e === null || e[1].due > Date.now()) return;
    const [id, t] = e;
    if (t.interval >= 0) {
      t.due = Date.now() + t.interval;
      t.seq = timerSeq++;
    } else {
      timers.delete(id);
    }
    try {
      t.fn(...t.args);
    } catch (err) {
      consoleObject.error("Uncaught (in timer)", err);
    }
  };
  internal.clearTimers = () => timers.clear();

  // ------------------------------------------------- events, AbortSignal
  class Event {
    #type;
    constructor(type, init = {}) {
      this.#type = String(type);
      this.bubbles = !!init.bubbles;
      this.cancelable = !!init.cancelable;
      this.defaultPrevented = false;
      this.target = null;
      this.currentTarget = null;
      this.timeStamp = Date.now();
    }
    get type() {
      return this.#type;
    }
    preventDefault() {
      if (this.cancelable) this.defaultPrevented = true;
    }
    stopPropagation() {}
    stopImmediatePropagation() {
      this._stop = true;
    }
  }
  class EventTarget {
    #listeners = new Map();
    addEventListener(type, listener, options) {
      if (listener == null) return;
      const once = typeof options === "object" && options !== null && !!options.once;
      const list = this.#listeners.get(type) || [];
      if (list.some((l) => l.listener === listener)) return;
      list.push({ listener, once });
      this.#listeners.set(type, list);
      if (options && options.signal) {
        options.signal.addEventListener("abort", () => this.removeEventListener(type, listener));
      }
    }
    removeEventListener(type, listener) {
      const list = this.#listeners.get(type);
      if (list) this.#listeners.set(type, list.filter((l) => l.listener !== listener));
    }
    dispatchEvent(event) {
      event.target = this;
      event.currentTarget = this;
      const handlerProp = this["on" + event.type];
      const list = (this.#listeners.get(event.type) || []).slice();
      if (typeof handlerProp === "function") list.unshift({ listener: handlerProp, once: false });
      for (const l of list) {
        if (l.once) this.removeEventListener(event.type, l.listener);
        try {
          if (typeof l.listener === "function") l.listener.call(this, event);
          else if (l.listener && typeof l.listener.handleEvent === "function") l.listener.handleEvent(event);
        } catch (err) {
          consoleObject.error("Uncaught (in event listener)", err);
        }
        if (event._stop) break;
      }
      return !event.defaultPrevented;
    }
  }
  const SIGNAL_KEY = Symbol("signal");
  class AbortSignal extends EventTarget {
    #aborted = false;
    #reason = undefined;
    constructor(key) {
      super();
      if (key !== SIGNAL_KEY) throw new TypeError("Illegal constructor");
      this.onabort = null;
    }
    get aborted() {
      return this.#aborted;
    }
    get reason() {
      return this.#reason;
    }
    throwIfAborted() {
      if (this.#aborted) throw this.#reason;
    }
    _abort(reason) {
      if (this.#aborted) return;
      this.#aborted = true;
      this.#reason = reason === undefined ? new DOMException("This operation was aborted", "AbortError") : reason;
      this.dispatchEvent(new Event("abort"));
    }
    static abort(reason) {
      const s = new AbortSignal(SIGNAL_KEY);
      s._abort(reason);
      return s;
    }
    static timeout(ms) {
      const s = new AbortSignal(SIGNAL_KEY);
      addTimer(() => s._abort(new DOMException("The operation timed out.", "TimeoutError")), ms, [], false);
      return s;
    }
    static any(signals) {
      const s = new AbortSignal(SIGNAL_KEY);
      for (const x of signals) {
        if (x.aborted) {
          s._abort(x.reason);
          return s;
        }
      }
      for (const x of signals) x.addEventListener("abort", () => s._abort(x.reason), { once: true });
      return s;
    }
  }
  class AbortController {
    #signal = new AbortSignal(SIGNAL_KEY);
    get signal() {
      return this.#signal;
    }
    abort(reason) {
      this.#signal._abort(reason);
    }
  }
  define("Event", Event);
  define("EventTarget", EventTarget);
  define("AbortSignal", AbortSignal);
  define("AbortController", AbortController);

  // -------------------------------------------------------- structuredClone
  function cloneValue(v, seen) {
    if (v === null || (typeof v !== "object" && typeof v !== "function" && typeof v !== "symbol")) return v;
    if (typeof v === "function" || typeof v === "symbol") {
      throw new DOMException(`${String(v.name || v.toString())} could not be cloned.`, "DataCloneError");
    }
    if (seen.has(v)) return seen.get(v);
    let out;
    if (Array.isArray(v)) {
      out = new Array(v.length);
      seen.set(v, out);
      for (const k of Object.keys(v)) out[k] = cloneValue(v[k], seen);
      return out;
    }
    if (v instanceof Date) out = new Date(v.getTime());
    else if (v instanceof RegExp) out = new RegExp(v.source, v.flags);
    else if (v instanceof ArrayBuffer) out = v.slice(0);
    else if (ArrayBuffer.isView(v)) {
      const buffer = cloneValue(v.buffer, seen);
      out = v instanceof DataView
        ? new DataView(buffer, v.byteOffset, v.byteLength)
        : new v.constructor(buffer, v.byteOffset, v.length);
    } else if (v instanceof Map) {
      out = new Map();
      seen.set(v, out);
      for (const [k, x] of v) out.set(cloneValue(k, seen), cloneValue(x, seen));
      return out;
    } else if (v instanceof Set) {
      out = new Set();
      seen.set(v, out);
      for (const x of v) out.add(cloneValue(x, seen));
      return out;
    } else if (v instanceof Error) {
      const Ctor = { EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError }[v.name] || Error;
      out = new Ctor(v.message);
      if (v.stack !== undefined) out.stack = String(v.stack);
    } else if (v instanceof Boolean || v instanceof Number || v instanceof String) {
      out = Object(v.valueOf());
    } else if (typeof v.then === "function" || v instanceof WeakMap || v instanceof WeakSet) {
      throw new DOMException(`${Object.prototype.toString.call(v)} could not be cloned.`, "DataCloneError");
    } else {
      out = {};
      seen.set(v, out);
      for (const k of Object.keys(v)) out[k] = cloneValue(v[k], seen);
      return out;
    }
    seen.set(v, out);
    return out;
  }
  define("structuredClone", (value) => cloneValue(value, new Map()));

  // -------------------------------------------------- URL, URLSearchParams
  // Parsing and serialising are Rust's `url` crate (WHATWG URL Standard).
  const URL_PARTS = ["href", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "hash", "origin"];
  const URL_PRIVATE = Symbol("url");
  class URLSearchParams {
    #list = [];
    #url = null;
    constructor(init = "") {
      if (init instanceof URLSearchParams) {
        this.#list = init.#list.map(([k, v]) => [k, v]);
      } else if (typeof init === "object" && init !== null) {
        if (typeof init[Symbol.iterator] === "function") {
          for (const pair of init) {
            const p = [...pair];
            if (p.length !== 2) throw new TypeError("URLSearchParams: each pair must have exactly two items");
            this.#list.push([wellFormed(p[0]), wellFormed(p[1])]);
          }
        } else {
          for (const k of Object.keys(init)) this.#list.push([wellFormed(k), wellFormed(init[k])]);
        }
      } else {
        let s = wellFormed(init);
        if (s.startsWith("?")) s = s.slice(1);
        this.#parse(s);
      }
    }
    #parse(s) {
      const flat = native.formParse(s);
      this.#list = [];
      for (let i = 0; i < flat.length; i += 2) this.#list.push([flat[i], flat[i + 1]]);
    }
    static _attach(params, url, query) {
      params.#url = url;
      params.#parse(query);
    }
    #update() {
      if (this.#url) this.#url[URL_PRIVATE](this.toString());
    }
    get size() {
      return this.#list.length;
    }
    append(name, value) {
      this.#list.push([wellFormed(name), wellFormed(value)]);
      this.#update();
    }
    delete(name, value) {
      name = wellFormed(name);
      const v = value === undefined ? undefined : wellFormed(value);
      this.#list = this.#list.filter(([k, x]) => !(k === name && (v === undefined || x === v)));
      this.#update();
    }
    get(name) {
      name = wellFormed(name);
      const e = this.#list.find(([k]) => k === name);
      return e ? e[1] : null;
    }
    getAll(name) {
      name = wellFormed(name);
      return this.#list.filter(([k]) => k === name).map(([, v]) => v);
    }
    has(name, value) {
      name = wellFormed(name);
      const v = value === undefined ? undefined : wellFormed(value);
      return this.#list.some(([k, x]) => k === name && (v === undefined || x === v));
    }
    set(name, value) {
      name = wellFormed(name);
      value = wellFormed(value);
      const i = this.#list.findIndex(([k]) => k === name);
      if (i < 0) this.#list.push([name, value]);
      else {
        this.#list[i][1] = value;
        this.#list = this.#list.filter(([k], j) => j <= i || k !== name);
      }
      this.#update();
    }
    sort() {
      // Stable, by UTF-16 code units (JavaScript's default string order).
      this.#list = this.#list
        .map((e, i) => [e, i])
        .sort((a, b) => (a[0][0] < b[0][0] ? -1 : a[0][0] > b[0][0] ? 1 : a[1] - b[1]))
        .map(([e]) => e);
      this.#update();
    }
    forEach(callback, thisArg) {
      for (const [k, v] of this.#list.slice()) callback.call(thisArg, v, k, this);
    }
    *entries() {
      for (let i = 0; i < this.#list.length; i++) yield [this.#list[i][0], this.#list[i][1]];
    }
    *keys() {
      for (const [k] of this.entries()) yield k;
    }
    *values() {
      for (const [, v] of this.entries()) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
    toString() {
      return native.formSerialize(this.#list.flat());
    }
  }

  class URL {
    #parts;
    #params = null;
    constructor(url, base) {
      if (arguments.length === 0) throw new TypeError("URL: 1 argument required");
      const parts = native.urlParse(wellFormed(url), base === undefined ? undefined : wellFormed(base));
      if (parts == null) throw new TypeError(`Invalid URL: '${String(url)}'`);
      this.#parts = parts;
    }
    static canParse(url, base) {
      return native.urlParse(wellFormed(url), base === undefined ? undefined : wellFormed(base)) != null;
    }
    static parse(url, base) {
      try {
        return new URL(url, base);
      } catch {
        return null;
      }
    }
    #get(name) {
      return this.#parts[URL_PARTS.indexOf(name)];
    }
    #set(name, value) {
      const parts = native.urlSet(this.#parts[0], name, wellFormed(value));
      if (parts == null) {
        if (name === "href") throw new TypeError(`Invalid URL: '${String(value)}'`);
        return;
      }
      this.#parts = parts;
      if (this.#params && name !== "searchParams") {
        URLSearchParams._attach(this.#params, this, this.#get("search").replace(/^\?/, ""));
      }
    }
    [URL_PRIVATE](query) {
      const parts = native.urlSet(this.#parts[0], "search", query);
      if (parts !== null) this.#parts = parts;
    }
    get href() {
      return this.#get("href");
    }
    set href(value) {
      this.#set("href", value);
    }
    get protocol() {
      return this.#get("protocol");
    }
    set protocol(value) {
      this.#set("protocol", value);
    }
    get username() {
      return this.#get("username");
    }
    set username(value) {
      this.#set("username", value);
    }
    get password() {
      return this.#get("password");
    }
    set password(value) {
      this.#set("password", value);
    }
    get host() {
      return this.#get("host");
    }
    set host(value) {
      this.#set("host", value);
    }
    get hostname() {
      return this.#get("hostname");
    }
    set hostname(value) {
      this.#set("hostname", value);
    }
    get port() {
      return this.#get("port");
    }
    set port(value) {
      this.#set("port", value);
    }
    get pathname() {
      return this.#get("pathname");
    }
    set pathname(value) {
      this.#set("pathname", value);
    }
    get search() {
      return this.#get("search");
    }
    set search(value) {
      this.#set("search", value);
    }
    get hash() {
      return this.#get("hash");
    }
    set hash(value) {
      this.#set("hash", value);
    }
    get searchParams() {
      if (this.#params === null) {
        this.#params = new URLSearchParams();
        URLSearchParams._attach(this.#params, this, this.#get("search").replace(/^\?/, ""));
      }
      return this.#params;
    }
    get origin() {
      return this.#get("origin");
    }
    toString() {
      return this.#parts[0];
    }
    toJSON() {
      return this.#parts[0];
    }
  }
  define("URL", URL);
  define("URLSearchParams", URLSearchParams);

  // ----------------------------------------------------------------- Headers
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  // Names already checked, by what the function wrote (`Content-Type`) to
  // what is stored (`content-type`): a function sets the same few names on
  // every invocation. Bounded: a function making up names gets no cache.
  const NAMES = new Map();
  function headerName(name) {
    const n = typeof name === "string" ? name : String(name);
    const known = NAMES.get(n);
    if (known !== undefined) return known;
    if (!TOKEN.test(n)) throw new TypeError(`Headers: invalid header name '${n}'`);
    const lower = n.toLowerCase();
    if (NAMES.size < 256) NAMES.set(n, lower);
    return lower;
  }
  // No NUL, CR, LF or character above U+00FF; no leading or trailing
  // whitespace (the common case: one test).
  const PLAIN_VALUE = /^(?:[^\0\t\n\r \u0100-\uffff](?:[^\0\n\r\u0100-\uffff]*[^\0\t\n\r \u0100-\uffff])?)?$/;
  function headerValue(value) {
    let v = typeof value === "string" ? value : String(value);
    if (PLAIN_VALUE.test(v)) return v;
    v = v.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
    if (/[\0\r\n\u0100-\uffff]/.test(v)) throw new TypeError(`Headers: invalid header value '${v}'`);
    return v;
  }
  const HEADERS_GUARD = Symbol("guard");
  // The list of a Headers: names (lower case) and values, alternating.
  let headerList;
  let adoptList;
  class Headers {
    #list = [];
    static {
      headerList = (h) => h.#list;
      adoptList = (h, list) => {
        h.#list = list;
      };
    }
    constructor(init) {
      if (init === undefined || init === null) return;
      if (init instanceof Headers) {
        this.#list = init.#list.slice();
      } else if (typeof init === "object") {
        if (typeof init[Symbol.iterator] === "function") {
          for (const pair of init) {
            const p = typeof pair === "string" ? null : [...pair];
            if (!p || p.length !== 2) throw new TypeError("Headers: each header pair must be [name, value]");
            this.append(p[0], p[1]);
          }
        } else {
          for (const k of Object.keys(init)) this.append(k, init[k]);
        }
      } else {
        throw new TypeError("Headers: init must be an object, an iterable of pairs or Headers");
      }
    }
    append(name, value) {
      this.#list.push(headerName(name), headerValue(value));
    }
    delete(name) {
      const n = headerName(name);
      const list = this.#list;
      const kept = [];
      for (let i = 0; i < list.length; i += 2) if (list[i] !== n) kept.push(list[i], list[i + 1]);
      this.#list = kept;
    }
    get(name) {
      const n = headerName(name);
      const list = this.#list;
      let out = null;
      for (let i = 0; i < list.length; i += 2) {
        if (list[i] === n) out = out === null ? list[i + 1] : `${out}, ${list[i + 1]}`;
      }
      return out;
    }
    getSetCookie() {
      const list = this.#list;
      const out = [];
      for (let i = 0; i < list.length; i += 2) if (list[i] === "set-cookie") out.push(list[i + 1]);
      return out;
    }
    has(name) {
      const n = headerName(name);
      const list = this.#list;
      for (let i = 0; i < list.length; i += 2) if (list[i] === n) return true;
      return false;
    }
    set(name, value) {
      const n = headerName(name);
      const v = headerValue(value);
      const list = this.#list;
      let i = 0;
      while (i < list.length && list[i] !== n) i += 2;
      if (i === list.length) {
        list.push(n, v);
        return;
      }
      list[i + 1] = v;
      // Later entries of the same name go.
      let j = i + 2;
      for (let k = i + 2; k < list.length; k += 2) {
        if (list[k] !== n) {
          list[j] = list[k];
          list[j + 1] = list[k + 1];
          j += 2;
        }
      }
      list.length = j;
    }
    // Sorted by name and combined, except set-cookie (WHATWG Fetch).
    #sorted() {
      const list = this.#list;
      const names = [];
      for (let i = 0; i < list.length; i += 2) if (!names.includes(list[i])) names.push(list[i]);
      names.sort();
      const out = [];
      for (const n of names) {
        if (n === "set-cookie") {
          for (const v of this.getSetCookie()) out.push([n, v]);
        } else {
          out.push([n, this.get(n)]);
        }
      }
      return out;
    }
    forEach(callback, thisArg) {
      for (const [k, v] of this.#sorted()) callback.call(thisArg, v, k, this);
    }
    *entries() {
      yield* this.#sorted();
    }
    *keys() {
      for (const [k] of this.#sorted()) yield k;
    }
    *values() {
      for (const [, v] of this.#sorted()) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
  }
  define("Headers", Headers);
  // What Rust reads and writes: the list itself (names and values
  // alternating; names from the host are lower case already).
  function flatHeaders(h) {
    return headerList(h);
  }
  function headersFromFlat(flat) {
    const h = new Headers();
    const list = headerList(h);
    for (let i = 0; i + 1 < flat.length; i += 2) list.push(flat[i], flat[i + 1]);
    return h;
  }

  // ------------------------------------------------- Blob, File, FormData
  function latin1Bytes(s) {
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
    return out;
  }
  function concatBytes(parts) {
    let total = 0;
    for (const p of parts) total += p.length;
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  const BLOB_BYTES = Symbol("blob");
  class Blob {
    constructor(parts = [], options = {}) {
      if (typeof parts !== "object" || parts === null || typeof parts[Symbol.iterator] !== "function") {
        throw new TypeError("Blob: the parts must be an iterable");
      }
      const chunks = [];
      for (const p of parts) {
        if (p instanceof Blob) chunks.push(p[BLOB_BYTES]);
        else if (bytesOf(p)) chunks.push(bytesOf(p).slice());
        else chunks.push(utf8Encode(String(p)));
      }
      const type = options && options.type !== undefined ? String(options.type) : "";
      Object.defineProperty(this, BLOB_BYTES, { value: concatBytes(chunks) });
      Object.defineProperty(this, "_type", { value: /^[\x20-\x7e]*$/.test(type) ? type.toLowerCase() : "" });
    }
    get size() {
      return this[BLOB_BYTES].length;
    }
    get type() {
      return this._type;
    }
    async text() {
      return utf8Decode(this[BLOB_BYTES], false, false);
    }
    async arrayBuffer() {
      return this[BLOB_BYTES].slice().buffer;
    }
    async bytes() {
      return this[BLOB_BYTES].slice();
    }
    slice(start = 0, end = this.size, type = "") {
      const n = this.size;
      const rel = (x) => (x < 0 ? Math.max(n + x, 0) : Math.min(x, n));
      return new Blob([this[BLOB_BYTES].subarray(rel(start), Math.max(rel(start), rel(end)))], { type });
    }
    stream() {
      const bytes = this[BLOB_BYTES];
      return new ReadableStream({
        start(c) {
          c.enqueue(bytes.slice());
          c.close();
        },
      });
    }
  }
  class File extends Blob {
    #name;
    #lastModified;
    constructor(parts, name, options = {}) {
      if (arguments.length < 2) throw new TypeError("File: 2 arguments required");
      super(parts, options);
      this.#name = String(name);
      this.#lastModified = options && options.lastModified !== undefined ? Number(options.lastModified) : Date.now();
    }
    get name() {
      return this.#name;
    }
    get lastModified() {
      return this.#lastModified;
    }
  }
  define("Blob", Blob);
  define("File", File);

  function formEntry(name, value, filename) {
    name = wellFormed(name);
    if (value instanceof Blob) {
      if (!(value instanceof File) || filename !== undefined) {
        value = new File([value], filename !== undefined ? String(filename) : value instanceof File ? value.name : "blob", {
          type: value.type,
        });
      }
      return [name, value];
    }
    return [name, wellFormed(value)];
  }
  class FormData {
    #list = [];
    constructor(form) {
      if (form !== undefined) throw new TypeError("FormData: a form element is not supported");
    }
    append(name, value, filename) {
      this.#list.push(formEntry(name, value, filename));
    }
    set(name, value, filename) {
      const entry = formEntry(name, value, filename);
      const i = this.#list.findIndex(([k]) => k === entry[0]);
      if (i < 0) this.#list.push(entry);
      else {
        this.#list[i] = entry;
        this.#list = this.#list.filter(([k], j) => j <= i || k !== entry[0]);
      }
    }
    get(name) {
      const e = this.#list.find(([k]) => k === String(name));
      return e ? e[1] : null;
    }
    getAll(name) {
      return this.#list.filter(([k]) => k === String(name)).map(([, v]) => v);
    }
    has(name) {
      return this.#list.some(([k]) => k === String(name));
    }
    delete(name) {
      this.#list = this.#list.filter(([k]) => k !== String(name));
    }
    forEach(callback, thisArg) {
      for (const [k, v] of this.#list.slice()) callback.call(thisArg, v, k, this);
    }
    *entries() {
      for (const [k, v] of this.#list.slice()) yield [k, v];
    }
    *keys() {
      for (const [k] of this.entries()) yield k;
    }
    *values() {
      for (const [, v] of this.entries()) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
  }
  define("FormData", FormData);

  function quoteFormName(s) {
    return s.replace(/\r\n|\r|\n/g, "\r\n").replace(/\n/g, "%0A").replace(/\r/g, "%0D").replace(/"/g, "%22");
  }
  /** multipart/form-data encoding of a FormData: [bytes, boundary]. */
  function encodeMultipart(form) {
    const rnd = native.randomBytes(12);
    let boundary = "----madbaseFormBoundary";
    for (const b of rnd) boundary += (b % 36).toString(36);
    const parts = [];
    for (const [name, value] of form) {
      let head = `--${boundary}\r\nContent-Disposition: form-data; name="${quoteFormName(name)}"`;
      if (value instanceof File) {
        head += `; filename="${quoteFormName(value.name)}"\r\nContent-Type: ${value.type || "application/octet-stream"}\r\n\r\n`;
        parts.push(utf8Encode(head), value[BLOB_BYTES], utf8Encode("\r\n"));
      } else {
        parts.push(utf8Encode(`${head}\r\n\r\n${value.replace(/\r(?!\n)|(?<!\r)\n/g, "\r\n")}\r\n`));
      }
    }
    parts.push(utf8Encode(`--${boundary}--\r\n`));
    return [concatBytes(parts), boundary];
  }
  function headerParam(value, param) {
    const m = new RegExp(`;\\s*${param}\\*?=\\s*(?:"((?:[^"\\\\]|\\\\.)*)"|([^;\\s]*))`, "i").exec(value);
    if (!m) return null;
    return m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2];
  }
  /** A FormData from a body with its content type (urlencoded or multipart). */
  function parseForm(bytes, contentType) {
    const ct = (contentType || "").toLowerCase();
    const form = new FormData();
    if (ct.startsWith("application/x-www-form-urlencoded")) {
      for (const [k, v] of new URLSearchParams(utf8Decode(bytes, false, false))) form.append(k, v);
      return form;
    }
    if (!ct.startsWith("multipart/form-data")) {
      throw new TypeError(`Body.formData: unsupported content type '${contentType}'`);
    }
    const boundary = headerParam(contentType, "boundary");
    if (!boundary) throw new TypeError("Body.formData: multipart body without a boundary");
    const text = latin1(bytes);
    const delimiter = `--${boundary}`;
    let at = text.indexOf(delimiter);
    if (at < 0) throw new TypeError("Body.formData: no multipart boundary in the body");
    for (;;) {
      at += delimiter.length;
      if (text.startsWith("--", at)) break;
      const headEnd = text.indexOf("\r\n\r\n", at);
      const next = text.indexOf(`\r\n${delimiter}`, headEnd < 0 ? at : headEnd);
      if (headEnd < 0 || next < 0) throw new TypeError("Body.formData: malformed multipart body");
      const headers = {};
      for (const line of text.slice(at, headEnd).split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      const disposition = utf8Decode(latin1Bytes(headers["content-disposition"] || ""), false, false);
      const name = headerParam(disposition, "name");
      if (name === null) throw new TypeError("Body.formData: a part without a name");
      const filename = headerParam(disposition, "filename");
      const content = latin1Bytes(text.slice(headEnd + 4, next));
      if (filename !== null) {
        form.append(name, new File([content], filename, { type: headers["content-type"] || "" }));
      } else {
        form.append(name, utf8Decode(content, false, false));
      }
      at = next + 2;
    }
    return form;
  }

  // -------------------------------------------------------------- bodies
  // A body is null, { text } (a string, kept as is) or { bytes } (a Uint8Array).
  function extractBody(body, headers) {
    if (body === null || body === undefined) return null;
    let contentType = null;
    let out;
    if (typeof body === "string") {
      out = { text: body };
      contentType = "text/plain;charset=UTF-8";
    } else if (body instanceof URLSearchParams) {
      out = { text: body.toString() };
      contentType = "application/x-www-form-urlencoded;charset=UTF-8";
    } else if (bytesOf(body)) {
      out = { bytes: bytesOf(body).slice() };
    } else if (body instanceof Blob) {
      out = { bytes: body[BLOB_BYTES].slice() };
      if (body.type !== "") contentType = body.type;
    } else if (body instanceof FormData) {
      const [bytes, boundary] = encodeMultipart(body);
      out = { bytes };
      contentType = `multipart/form-data; boundary=${boundary}`;
    } else if (body instanceof ReadableStream) {
      out = body._source();
    } else if (typeof body === "object" && typeof body.getReader === "function") {
      throw new TypeError("Body: streaming bodies (ReadableStream) are not supported");
    } else {
      out = { text: String(body) };
      contentType = "text/plain;charset=UTF-8";
    }
    if (contentType !== null && !headers.has("content-type")) headers.set("content-type", contentType);
    return out;
  }
  function bodyBytes(b) {
    if (b === null) return new Uint8Array(0);
    return b.bytes !== undefined ? b.bytes : utf8Encode(b.text);
  }
  function bodyText(b) {
    if (b === null) return "";
    return b.text !== undefined ? b.text : utf8Decode(b.bytes, false, false);
  }
  // Streams: a body read through `getReader()` is one chunk; a stream the
  // function makes (`new ReadableStream({ start, pull })`) is buffered: its
  // chunks are collected when the body is read or the response is sent.
  class ReadableStream {
    #body = null;
    #user = false;
    #locked = false;
    #queue = [];
    #closed = false;
    #errored = false;
    #error = undefined;
    #wake = null;
    #pull = null;
    #cancel = null;
    #started = null;
    constructor(source, strategy) {
      void strategy;
      if (source && source[HEADERS_GUARD]) {
        this.#body = source.body;
        return;
      }
      source = source || {};
      this.#user = true;
      const controller = {
        enqueue: (chunk) => {
          if (this.#closed) throw new TypeError("ReadableStream: enqueue after close");
          this.#queue.push(chunk);
          this.#notify();
        },
        close: () => {
          this.#closed = true;
          this.#notify();
        },
        error: (e) => {
          this.#errored = true;
          this.#error = e;
          this.#notify();
        },
        get desiredSize() {
          return 1;
        },
      };
      this.#pull = typeof source.pull === "function" ? () => source.pull(controller) : null;
      this.#cancel = typeof source.cancel === "function" ? (r) => source.cancel(r) : null;
      const started = typeof source.start === "function" ? source.start(controller) : undefined;
      this.#started = Promise.resolve(started).catch((e) => controller.error(e));
    }
    #notify() {
      const wake = this.#wake;
      this.#wake = null;
      if (wake) wake();
    }
    get locked() {
      return this.#locked;
    }
    _lock() {
      if (this.#locked) throw new TypeError("ReadableStream is locked");
      this.#locked = true;
    }
    /** What a Request or Response made from this stream holds as its body. */
    _source() {
      if (this.#user) {
        if (this.#locked) throw new TypeError("ReadableStream is locked");
        return { stream: this };
      }
      this._lock();
      return this.#body;
    }
    async _next() {
      if (!this.#user) {
        if (this.#closed || this.#body === null) return { done: true, value: undefined };
        this.#closed = true;
        return { done: false, value: bodyBytes(this.#body) };
      }
      await this.#started;
      for (;;) {
        if (this.#queue.length > 0) return { done: false, value: this.#queue.shift() };
        if (this.#errored) throw this.#error;
        if (this.#closed) return { done: true, value: undefined };
        if (this.#pull !== null) {
          await this.#pull();
          if (this.#queue.length > 0 || this.#closed || this.#errored) continue;
        }
        await new Promise((resolve) => {
          this.#wake = resolve;
        });
      }
    }
    /** All chunks (Uint8Array or string) as one Uint8Array. */
    async _readAll() {
      const parts = [];
      let total = 0;
      for (;;) {
        const { done, value } = await this._next();
        if (done) break;
        const bytes = typeof value === "string" ? utf8Encode(value) : bytesOf(value);
        if (!bytes) throw new TypeError("ReadableStream: a body chunk must be a Uint8Array or a string");
        parts.push(bytes);
        total += bytes.length;
      }
      const out = new Uint8Array(total);
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      return out;
    }
    getReader() {
      this._lock();
      let released = false;
      return {
        read: () => (released ? Promise.reject(new TypeError("reader released")) : this._next()),
        releaseLock: () => {
          released = true;
          this.#locked = false;
        },
        cancel: async (reason) => this.cancel(reason, true),
        closed: Promise.resolve(),
      };
    }
    async cancel(reason, fromReader) {
      if (this.#locked && !fromReader) throw new TypeError("ReadableStream is locked");
      this.#closed = true;
      this.#queue = [];
      if (this.#cancel !== null) await this.#cancel(reason);
    }
    tee() {
      throw new TypeError("ReadableStream.tee() is not supported");
    }
    pipeTo() {
      return Promise.reject(new TypeError("ReadableStream.pipeTo() is not supported"));
    }
    pipeThrough() {
      throw new TypeError("ReadableStream.pipeThrough() is not supported");
    }
    async *[Symbol.asyncIterator]() {
      const r = this.getReader();
      for (;;) {
        const { done, value } = await r.read();
        if (done) return;
        yield value;
      }
    }
  }
  async function materialize(b) {
    if (b === null || b.stream === undefined) return b;
    return { bytes: await b.stream._readAll() };
  }
  define("ReadableStream", ReadableStream);

  const BODY = Symbol("body");
  // A body read as `convert` makes it, as a promise; a body the function
  // did not give as a stream is converted at once (no `await`: the
  // engine's job queue stays out of it).
  function readBody(self, convert) {
    try {
      const b = self._consume();
      if (b !== null && b.stream !== undefined) return materialize(b).then(convert);
      return Promise.resolve(convert(b));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  function jsonOf(b) {
    return JSON.parse(bodyText(b));
  }
  function arrayBufferOf(b) {
    const bytes = bodyBytes(b);
    return bytes.buffer.byteLength === bytes.byteLength ? bytes.buffer : bytes.slice().buffer;
  }
  function bytesCopyOf(b) {
    return bodyBytes(b).slice();
  }
  class Body {
    constructor() {
      this[BODY] = { body: null, used: false, stream: null };
    }
    get body() {
      const s = this[BODY];
      if (s.body === null) return null;
      if (s.body.stream !== undefined) return s.body.stream;
      if (s.stream === null) {
        s.stream = new ReadableStream({ [HEADERS_GUARD]: true, body: s.body });
      }
      return s.stream;
    }
    get bodyUsed() {
      const s = this[BODY];
      if (s.body !== null && s.body.stream !== undefined) return s.used || s.body.stream.locked;
      return s.used || (s.stream !== null && s.stream.locked);
    }
    _consume() {
      const s = this[BODY];
      if (this.bodyUsed) throw new TypeError("Body is unusable: body has already been read");
      s.used = true;
      if (s.body !== null && s.body.stream !== undefined) s.body.stream._lock();
      return s.body;
    }
    text() {
      return readBody(this, bodyText);
    }
    json() {
      return readBody(this, jsonOf);
    }
    arrayBuffer() {
      return readBody(this, arrayBufferOf);
    }
    bytes() {
      return readBody(this, bytesCopyOf);
    }
    async formData() {
      const ct = this.headers.get("content-type");
      return parseForm(bodyBytes(await materialize(this._consume())), ct);
    }
    async blob() {
      const ct = this.headers.get("content-type") || "";
      return new Blob([bodyBytes(await materialize(this._consume()))], { type: ct });
    }
  }

  // ----------------------------------------------------------- Request
  const METHOD_NORMAL = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];
  // Set by `internal.invoke` for the one `new Request` that follows.
  let incoming = null;
  class Request extends Body {
    #url;
    #method;
    #headers;
    // The invocation's headers as the host sent them (names and values
    // joined by NUL), until `headers` is first read: most handlers never
    // read them, and splitting them is a tenth of a warm invocation.
    #joined = "";
    #signal;
    #redirect;
    constructor(input, init = {}) {
      super();
      if (incoming !== null) {
        // The invocation's request (`internal.invoke`): the host's values,
        // checked there.
        const p = incoming;
        incoming = null;
        this.#url = p.url;
        this.#method = p.method;
        this.#headers = null;
        this.#joined = p.joined;
        this.#redirect = "follow";
        this.#signal = null;
        if (p.body !== null) this[BODY].body = { bytes: p.body };
        return;
      }
      init = init || {};
      let inner = null;
      if (input instanceof Request) {
        inner = input;
        this.#url = input.url;
      } else {
        const parsed = native.urlParse(wellFormed(input), undefined);
        if (parsed == null) throw new TypeError(`Request: invalid URL '${String(input)}'`);
        this.#url = parsed[0];
      }
      let method = init.method !== undefined ? String(init.method) : inner ? inner.method : "GET";
      if (!TOKEN.test(method)) throw new TypeError(`Request: invalid method '${method}'`);
      if (METHOD_NORMAL.includes(method.toUpperCase())) method = method.toUpperCase();
      if (["CONNECT", "TRACE", "TRACK"].includes(method.toUpperCase())) {
        throw new TypeError(`Request: method '${method}' is forbidden`);
      }
      this.#method = method;
      this.#headers = new Headers(init.headers !== undefined ? init.headers : inner ? inner.headers : undefined);
      this.#redirect = init.redirect !== undefined ? String(init.redirect) : inner ? inner.redirect : "follow";
      if (!["follow", "error", "manual"].includes(this.#redirect)) throw new TypeError(`Request: invalid redirect '${this.#redirect}'`);
      // Made when first asked for (most requests never are).
      this.#signal = init.signal ? init.signal : inner ? inner.signal : null;
      let body = null;
      if (init.body !== undefined && init.body !== null) {
        body = extractBody(init.body, this.#headers);
      } else if (inner !== null && inner[BODY].body !== null) {
        body = inner._consume();
      }
      if (body !== null && (method === "GET" || method === "HEAD")) {
        throw new TypeError("Request with GET/HEAD method cannot have body.");
      }
      this[BODY].body = body;
    }
    get url() {
      return this.#url;
    }
    get method() {
      return this.#method;
    }
    get headers() {
      if (this.#headers === null) {
        this.#headers = new Headers();
        if (this.#joined !== "") adoptList(this.#headers, this.#joined.split("\0"));
        this.#joined = "";
      }
      return this.#headers;
    }
    get signal() {
      if (this.#signal === null) this.#signal = new AbortController().signal;
      return this.#signal;
    }
    get redirect() {
      return this.#redirect;
    }
    get cache() {
      return "default";
    }
    get credentials() {
      return "same-origin";
    }
    get mode() {
      return "cors";
    }
    get destination() {
      return "";
    }
    get referrer() {
      return "about:client";
    }
    get integrity() {
      return "";
    }
    get keepalive() {
      return false;
    }
    clone() {
      if (this.bodyUsed) throw new TypeError("Request.clone: body has already been read");
      if (this[BODY].body !== null && this[BODY].body.stream !== undefined) throw new TypeError("Request.clone: a stream body cannot be cloned");
      const r = new Request(this.#url, { method: this.#method, headers: this.headers, signal: this.#signal, redirect: this.#redirect });
      r[BODY].body = this[BODY].body;
      return r;
    }
  }
  define("Request", Request);

  // ---------------------------------------------------------- Response
  const NULL_BODY_STATUS = [101, 103, 204, 205, 304];
  const REDIRECT_STATUS = [301, 302, 303, 307, 308];
  const RESPONSE_KEY = Symbol("response");
  class Response extends Body {
    #status = 200;
    #statusText = "";
    #headers;
    #type = "default";
    #url = "";
    #redirected = false;
    constructor(body = null, init = {}) {
      super();
      init = init || {};
      if (init[RESPONSE_KEY]) {
        const r = init[RESPONSE_KEY];
        this.#status = r.status;
        this.#statusText = r.statusText;
        this.#headers = r.headers;
        this.#type = r.type;
        this.#url = r.url;
        this.#redirected = r.redirected;
        this[BODY].body = r.body;
        return;
      }
      const status = init.status === undefined ? 200 : Number(init.status);
      if (!Number.isInteger(status) || status < 200 || status > 599) {
        throw new RangeError(`Response: status ${init.status} is not in the range 200 to 599`);
      }
      const statusText = init.statusText === undefined ? "" : String(init.statusText);
      if (statusText !== "" && /[^\t\x20-\x7e\x80-\xff]/.test(statusText)) throw new TypeError("Response: invalid statusText");
      this.#status = status;
      this.#statusText = statusText;
      this.#headers = new Headers(init.headers);
      if (body !== null && body !== undefined) {
        if (NULL_BODY_STATUS.includes(status)) throw new TypeError(`Response with null body status ${status} cannot have a body`);
        this[BODY].body = extractBody(body, this.#headers);
      }
    }
    static json(data, init = {}) {
      const text = JSON.stringify(data);
      if (text === undefined) throw new TypeError("Response.json: the data is not JSON serializable");
      const r = new Response(null, init);
      if (NULL_BODY_STATUS.includes(r.#status)) throw new TypeError(`Response with null body status ${r.#status} cannot have a body`);
      if (!r.#headers.has("content-type")) r.#headers.set("content-type", "application/json");
      r[BODY].body = { text };
      return r;
    }
    static error() {
      return new Response(null, {
        [RESPONSE_KEY]: { status: 0, statusText: "", headers: new Headers(), type: "error", url: "", redirected: false, body: null },
      });
    }
    static redirect(url, status = 302) {
      const parsed = native.urlParse(wellFormed(url), undefined);
      if (parsed == null) throw new TypeError(`Response.redirect: invalid URL '${String(url)}'`);
      if (!REDIRECT_STATUS.includes(status)) throw new RangeError(`Response.redirect: invalid status ${status}`);
      const r = new Response(null, { status });
      r.#headers.set("location", parsed[0]);
      return r;
    }
    static _make(parts) {
      return new Response(null, { [RESPONSE_KEY]: parts });
    }
    get type() {
      return this.#type;
    }
    get url() {
      return this.#url;
    }
    get redirected() {
      return this.#redirected;
    }
    get status() {
      return this.#status;
    }
    get ok() {
      return this.#status >= 200 && this.#status <= 299;
    }
    get statusText() {
      return this.#statusText;
    }
    get headers() {
      return this.#headers;
    }
    clone() {
      if (this.bodyUsed) throw new TypeError("Response.clone: body has already been read");
      if (this[BODY].body !== null && this[BODY].body.stream !== undefined) throw new TypeError("Response.clone: a stream body cannot be cloned");
      return Response._make({
        status: this.#status,
        statusText: this.#statusText,
        headers: new Headers(this.#headers),
        type: this.#type,
        url: this.#url,
        redirected: this.#redirected,
        body: this[BODY].body,
      });
    }
  }
  define("Response", Response);

  // ------------------------------------------------------------- fetch
  const pendingFetches = new Map(); // id -> { resolve, reject, signal, onAbort }
  async function fetch(input, init) {
    const req = new Request(input, init);
    // A stream the function made is sent buffered.
    const body = await materialize(req[BODY].body);
    return new Promise((resolve, reject) => {
      const signal = req.signal;
      if (signal.aborted) throw signal.reason;
      const protocol = req.url.slice(0, req.url.indexOf(":") + 1);
      if (protocol !== "http:" && protocol !== "https:") {
        throw new TypeError(`fetch: scheme '${protocol}' is not supported`);
      }
      const started = native.fetchStart(
        req.method,
        req.url,
        flatHeaders(req.headers),
        body === null ? null : body.text !== undefined ? body.text : latin1(body.bytes),
        body !== null && body.text === undefined,
        req.redirect,
      );
      if (typeof started === "string") throw new FetchLimitError(started);
      const entry = { resolve, reject, signal, onAbort: null };
      entry.onAbort = () => {
        pendingFetches.delete(started);
        native.fetchCancel(started);
        reject(signal.reason);
      };
      signal.addEventListener("abort", entry.onAbort, { once: true });
      pendingFetches.set(started, entry);
    });
  }
  define("fetch", fetch);
  internal.fetchDone = (id, status, statusText, flat, bytes, url, redirected) => {
    const entry = pendingFetches.get(id);
    if (!entry) return;
    pendingFetches.delete(id);
    entry.signal.removeEventListener("abort", entry.onAbort);
    entry.resolve(
      Response._make({
        status,
        statusText,
        headers: headersFromFlat(flat),
        type: "basic",
        url,
        redirected,
        body: NULL_BODY_STATUS.includes(status) ? null : { bytes },
      }),
    );
  };
  internal.fetchFailed = (id, limit, message) => {
    const entry = pendingFetches.get(id);
    if (!entry) return;
    pendingFetches.delete(id);
    entry.signal.removeEventListener("abort", entry.onAbort);
    entry.reject(limit ? new FetchLimitError(message) : new TypeError(message));
  };
  internal.clearFetches = () => pendingFetches.clear();

  // -------------------------------------------------------------- Deno
  let env = {};
  let handler = null;
  const Deno = {
    serve(a, b) {
      const h = typeof a === "function" ? a : typeof b === "function" ? b : a && typeof a.handler === "function" ? a.handler : null;
      if (h === null) throw new TypeError("Deno.serve: a handler function is required");
      handler = h;
      const finished = new Promise(() => {});
      return {
        finished,
        shutdown: async () => {},
        ref() {},
        unref() {},
        addr: { transport: "tcp", hostname: "0.0.0.0", port: 0 },
      };
    },
    env: {
      get(name) {
        const v = Object.prototype.hasOwnProperty.call(env, name) ? env[name] : undefined;
        return v;
      },
      has(name) {
        return Object.prototype.hasOwnProperty.call(env, name);
      },
      set(name, value) {
        env[String(name)] = String(value);
      },
      delete(name) {
        delete env[name];
      },
      toObject() {
        return Object.assign({}, env);
      },
    },
  };
  define("Deno", Deno);
  define("self", g);
  define("navigator", { userAgent: "madbase-functions", language: "en-US", languages: ["en-US"], hardwareConcurrency: 1 });
  // Background work: the invocation's reply waits for it (there is no
  // "after the response" in a worker that runs one invocation at a time).
  let background = [];
  define("EdgeRuntime", {
    waitUntil(promise) {
      background.push(
        Promise.resolve(promise).catch((e) => consoleObject.error("Uncaught (in waitUntil)", e)),
      );
    },
  });

  internal.setEnv = (flat) => {
    env = {};
    for (let i = 0; i + 1 < flat.length; i += 2) env[flat[i]] = flat[i + 1];
  };
  internal.setDefault = (exported) => {
    if (handler === null && exported && typeof exported.fetch === "function") {
      handler = (req, info) => exported.fetch(req, info);
    }
  };
  internal.hasHandler = () => handler !== null;

  function describe(e) {
    if (e instanceof Error) {
      const first = typeof e.stack === "string" ? e.stack.split("\n").find((l) => l.trim().startsWith("at ")) : undefined;
      return `${e.name}: ${e.message}${first ? "\n" + first.trimEnd() : ""}`;
    }
    try {
      return `Uncaught ${inspect(e, 1, [])}`;
    } catch {
      return "Uncaught exception";
    }
  }
  function classify(e) {
    if (e instanceof FetchLimitError) return "fetch_limit";
    if (e instanceof Error && e.name === "InternalError" && /out of memory/.test(e.message)) return "memory_limit";
    return "exception";
  }
  function failure(e) {
    return { kind: classify(e), message: wellFormed(describe(e)) };
  }
  internal.failure = failure;

  /**
   * Runs the handler on one request; always resolves to an outcome object.
   * `url` is normalised (WHATWG) and `joined` holds lower-case names and
   * their values, alternating, joined by NUL: both checked by the host.
   */
  internal.invoke = (method, url, joined, body) => {
    if (handler === null) return Promise.resolve({ kind: "no_handler" });
    incoming = { url, method, joined, body: body !== null && body.length > 0 ? body : null };
    const req = new Request(url);
    const info = { remoteAddr: REMOTE_ADDR, completed: COMPLETED };
    return (async () => {
      let result;
      try {
        const res = await handler(req, info);
        if (!(res instanceof Response)) {
          const what = res === null ? "null" : typeof res === "object" ? (res.constructor && res.constructor.name) || "object" : typeof res;
          result = { kind: "bad_response", message: `the handler returned ${what}, not a Response` };
        } else if (res.type === "error" || res.status < 200) {
          result = { kind: "bad_response", message: "the handler returned a network error (Response.error())" };
        } else {
          const consumed = res._consume();
          const b = consumed !== null && consumed.stream !== undefined ? await materialize(consumed) : consumed;
          result = {
            kind: "response",
            status: res.status,
            headers: flatHeaders(res.headers),
            text: b !== null && b.text !== undefined ? wellFormed(b.text) : null,
            binary: b !== null && b.bytes !== undefined ? latin1(b.bytes) : null,
          };
        }
      } catch (e) {
        result = failure(e);
      }
      // The function's `EdgeRuntime.waitUntil` work ends before the reply.
      while (background.length > 0) {
        const pending = background;
        background = [];
        await Promise.all(pending);
      }
      return result;
    })();
  };
  // What Deno.serve's handler gets as its second argument.
  const REMOTE_ADDR = Object.freeze({ transport: "tcp", hostname: "0.0.0.0", port: 0 });
  const COMPLETED = Promise.resolve();

  if (native.testCrash) define("__madbaseTestCrash", () => native.testCrash());

  return internal;
});
