//! A seeded fuzzer of Herald's HTTP surface: generated bad requests (wrong methods, paths, ids,
//! query strings, headers, tokens, bodies of every shape and size, batch calls) sent to a running
//! server, each answer checked: never a 5xx, always Pryv's JSON envelope (`meta`, and
//! `error.id`/`error.message` on errors). Writes are sent with a read-only shared token or no
//! valid token at all, so the user's data must be the same afterwards ([`snapshot`]).
//!
//! Shared by the CI test (`crates/herald/tests/fuzz_http.rs`, a few thousand requests) and the
//! `fuzz` scenario of herald-bench (the long mode). Uses only std, tokio, reqwest and serde_json.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};

/// xorshift64*: small, seeded, the same sequence on every machine.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Who and what the fuzzer aims at.
#[derive(Clone)]
pub struct Target {
    pub base: String,
    pub username: String,
    /// Personal token: used for reads only (GET, HEAD).
    pub personal: String,
    /// A shared access with `read` on every stream: used for everything else.
    pub read_only: String,
    /// Known ids (streams, events, accesses) to aim at.
    pub ids: Vec<String>,
}

fn pick_key(rng: &mut Rng) -> &'static str {
    let events = herald_model::query::EVENTS_GET_PARAMS;
    let i = rng.below(events.len() + OTHER_KEYS.len());
    if i < events.len() {
        events[i]
    } else {
        OTHER_KEYS[i - events.len()]
    }
}

/// One generated request.
#[derive(Debug, Clone)]
pub struct FuzzRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// Parameter names worth trying: events.get's (`herald_model::query::EVENTS_GET_PARAMS`) and
/// these, of the other methods.
const OTHER_KEYS: &[&str] = &[
    "id",
    "streamIds",
    "streamId",
    "type",
    "content",
    "time",
    "duration",
    "trashed",
    "clientData",
    "description",
    "name",
    "parentId",
    "permissions",
    "expireAfter",
    "deviceName",
    "token",
    "url",
    "minIntervalMs",
    "maxRetries",
    "update",
    "method",
    "params",
    "any",
    "all",
    "not",
    "feature",
    "setting",
    "level",
    "selfRevoke",
    "mergeEventsWithParent",
    "username",
    "password",
    "appId",
    "email",
    "__proto__",
    "",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "*",
    "x",
    "diary",
    "note/txt",
    "count/*",
    "Bad/Type",
    "series:mass/kg",
    "true",
    "false",
    "null",
    "-1",
    "0",
    "1e400",
    "NaN",
    "[",
    "{",
    "]",
    "[{\"any\":[\"*\"]}]",
    "{\"all\":[\"x\"]}",
    "[[[[",
    "\u{0}",
    "é",
    "😀",
    "%00",
    "%zz",
    "../..",
    "http:///x",
    "http://u:p@example.com/",
    "ftp://x/",
    "http://127.0.0.1:1/",
    "http://exa\nmple.com",
    "javascript:alert(1)",
    "read",
    "manage",
    "contribute",
    "create-only",
    "forbidden",
    "default",
    "trashed",
    "all",
    "selfRevoke",
    "active",
    "inactive",
];

fn random_string(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => rng.pick(STRINGS).to_string(),
        1 => (0..rng.below(20)).map(|_| char::from(32 + rng.below(95) as u8)).collect(),
        2 => "a".repeat(rng.below(3000)),
        3 => (0..rng.below(8)).map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('?')).collect(),
        _ => rng.pick(STRINGS).to_string(),
    }
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(0),
        1 => json!(-(rng.below(1000) as i64)),
        2 => json!(rng.next()),
        3 => json!(1.5e300),
        4 => json!(rng.below(100) as f64 / 7.0),
        _ => json!(i64::MIN),
    }
}

/// Any JSON value, with object keys drawn mostly from the API's vocabulary.
pub fn random_json(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 4 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => Value::Array((0..rng.below(6)).map(|_| random_json(rng, depth - 1)).collect()),
        5 => {
            // A long list: the limits on types, streams and batch length.
            let n = *rng.pick(&[10usize, 101, 1001, 5000]);
            let item: String = random_string(rng).chars().take(24).collect();
            Value::Array((0..n).map(|i| if rng.chance(50) { json!(format!("{item}{i}")) } else { json!(item) }).collect())
        }
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(7) {
                let k = if rng.chance(85) { pick_key(rng).to_string() } else { random_string(rng) };
                m.insert(k, random_json(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

fn segment(rng: &mut Rng, t: &Target) -> String {
    match rng.below(6) {
        0 | 1 => rng.pick(&t.ids).clone(),
        2 => random_string(rng),
        3 => format!("%{:02x}{}", rng.below(256), rng.pick(STRINGS)),
        4 => "x".repeat(rng.below(300)),
        _ => rng.pick(&["", ".", "..", "%2F", "%ff%fe", "null", "*"]).to_string(),
    }
}

fn encode(s: &str) -> String {
    form_encode(s)
}

fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One bad (or odd) request.
pub fn generate(rng: &mut Rng, t: &Target) -> FuzzRequest {
    let u = if rng.chance(93) { t.username.clone() } else { segment(rng, t) };
    let resource = *rng.pick(&["events", "streams", "accesses", "webhooks"]);
    let id = segment(rng, t);
    let path = match rng.below(14) {
        0 => format!("/{u}/{resource}"),
        1 | 2 => format!("/{u}/{resource}/{}", encode(&id)),
        3 => format!("/{u}/webhooks/{}/test", encode(&id)),
        4 | 5 => format!("/{u}/"),
        6 => format!("/{u}/access-info"),
        7 => format!("/{u}/service/info"),
        8 => format!("/reg/{}/check_username", encode(&u)),
        9 => format!("/reg/{}/server", encode(&u)),
        10 => "/service/info".to_string(),
        11 => format!("/{}/{}/{}", encode(&segment(rng, t)), encode(&segment(rng, t)), encode(&segment(rng, t))),
        12 => format!("/{u}/events"),
        _ => format!("/{u}/{resource}"),
    };
    let mut query = vec![];
    for _ in 0..rng.below(5) {
        let k = if rng.chance(80) { pick_key(rng).to_string() } else { random_string(rng) };
        let k = if rng.chance(20) { format!("{k}[]") } else { k };
        let v = match rng.below(3) {
            0 => random_string(rng),
            1 => random_json(rng, 2).to_string(),
            _ => random_number(rng).to_string(),
        };
        query.push(format!("{}={}", form_encode(&k), form_encode(&v)));
    }
    let path = if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) };
    let method = rng.pick(&["GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD", "PATCH"]).to_string();
    let reading = method == "GET" || method == "HEAD";
    let mut headers = vec![];
    let token = match rng.below(6) {
        0 | 1 if reading => Some(t.personal.clone()),
        0..=2 => Some(t.read_only.clone()),
        3 => Some(random_string(rng)),
        4 => Some(format!("Basic {}", random_string(rng))),
        _ => None,
    };
    if let Some(tok) = token {
        headers.push(("Authorization".to_string(), tok));
    }
    if rng.chance(20) {
        for i in 0..rng.below(40) {
            headers.push((format!("x-fuzz-{i}"), random_string(rng).chars().filter(|c| c.is_ascii_graphic()).collect()));
        }
    }
    let body = if method == "GET" || method == "HEAD" || rng.chance(10) {
        None
    } else {
        let content_type = rng.pick(&["application/json", "application/json", "text/plain", "multipart/form-data", "x/y"]);
        headers.push(("Content-Type".to_string(), content_type.to_string()));
        Some(match rng.below(6) {
            0 => random_string(rng).into_bytes(),
            1 => {
                // A batch of random calls.
                let methods = [
                    "events.get",
                    "events.create",
                    "events.update",
                    "events.delete",
                    "streams.create",
                    "streams.update",
                    "accesses.create",
                    "accesses.delete",
                    "webhooks.create",
                    "webhooks.test",
                    "callBatch",
                    "nope",
                    "getAccessInfo",
                ];
                let calls: Vec<Value> =
                    (0..rng.below(8)).map(|_| json!({ "method": rng.pick(&methods), "params": random_json(rng, 3) })).collect();
                serde_json::to_vec(&calls).unwrap_or_default()
            }
            2 => {
                let mut v = random_json(rng, 3).to_string().into_bytes();
                let cut = rng.below(v.len() + 1);
                v.truncate(cut);
                v
            }
            _ => serde_json::to_vec(&random_json(rng, 4)).unwrap_or_default(),
        })
    };
    FuzzRequest { method, path, headers, body }
}

/// Send one request and check its answer. `Ok(None)`: the client could not even build it
/// (an invalid header value, say): not a server answer.
pub async fn send_and_check(client: &reqwest::Client, base: &str, r: &FuzzRequest) -> Result<Option<u16>, String> {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut b = client.request(method, format!("{base}{}", r.path));
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    if let Some(body) = &r.body {
        b = b.body(body.clone());
    }
    let req = match b.build() {
        Ok(req) => req,
        Err(_) => return Ok(None),
    };
    let resp = match client.execute(req).await {
        Ok(resp) => resp,
        // A URI the client itself refuses (longer than it can carry): not a server answer.
        Err(e) if e.is_builder() => return Ok(None),
        Err(e) => return Err(format!("{} {}: no answer: {}", r.method, short(&r.path), e.without_url())),
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("{} {}: body: {}", r.method, short(&r.path), e.without_url()))?;
    let fail = |why: &str| Err(format!("{} {} → {status}: {why}: {}", r.method, short(&r.path), short(&text)));
    if status >= 500 {
        return fail("a 5xx");
    }
    if r.method == "HEAD" {
        return if text.is_empty() { Ok(Some(status)) } else { fail("HEAD with a body") };
    }
    // Pryv's register-style lookups answer without `meta` (and `GET /reg/{u}/server` redirects).
    let path = r.path.split('?').next().unwrap_or("");
    let register_style = path.starts_with("/reg/") && ["/server", "/uid", "/username"].iter().any(|e| path.ends_with(e));
    if register_style && status == 302 {
        return Ok(Some(status));
    }
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => return fail("not JSON"),
    };
    if !v["meta"]["serverTime"].is_number() && !register_style {
        return fail("no meta");
    }
    if status >= 400 && !(v["error"]["id"].is_string() && v["error"]["message"].is_string()) {
        return fail("not Pryv's error envelope");
    }
    Ok(Some(status))
}

fn short(s: &str) -> String {
    s.chars().take(300).collect()
}

/// Everything the user owns, as the personal token reads it (without `meta`).
pub async fn snapshot(client: &reqwest::Client, t: &Target) -> Result<Value, String> {
    let mut out = Map::new();
    for (name, path, token) in [
        ("events", "events?state=all&limit=100000&includeDeletions=true&modifiedSince=0", &t.personal),
        ("streams", "streams?state=all", &t.personal),
        ("accesses", "accesses?includeDeletions=true", &t.personal),
        ("webhooks", "webhooks", &t.read_only),
    ] {
        let r = client
            .get(format!("{}/{}/{path}", t.base, t.username))
            .header("Authorization", token.as_str())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut v: Value = r.json().await.map_err(|e| e.to_string())?;
        if let Some(m) = v.as_object_mut() {
            m.remove("meta");
        }
        out.insert(name.into(), v);
    }
    Ok(Value::Object(out))
}

/// Results of a run.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub sent: usize,
    pub skipped: usize,
    pub by_status: std::collections::BTreeMap<u16, usize>,
}

/// Send `n` generated requests, `concurrency` at a time, from `seed`. The first failure ends
/// the run with the request and its answer.
pub async fn run(t: &Target, seed: u64, n: usize, concurrency: usize) -> Result<Stats, String> {
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..concurrency.max(1) {
        let (t, client, next) = (t.clone(), client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(stats);
                }
                // Each request from its own seed: a failure names the seed that replays it.
                let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                let r = generate(&mut rng, &t);
                match send_and_check(&client, &t.base, &r).await.map_err(|e| format!("request {i} of seed {seed}: {e}"))? {
                    Some(s) => {
                        stats.sent += 1;
                        *stats.by_status.entry(s).or_default() += 1;
                    }
                    None => stats.skipped += 1,
                }
            }
        }));
    }
    let mut all = Stats::default();
    for task in tasks {
        let s = task.await.map_err(|e| e.to_string())??;
        all.sent += s.sent;
        all.skipped += s.skipped;
        for (k, v) in s.by_status {
            *all.by_status.entry(k).or_default() += v;
        }
    }
    Ok(all)
}
