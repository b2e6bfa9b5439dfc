//! Black-box tests of scoped webhooks over real HTTP (spec 4.1, Pryv.io `[SNWA]`): the API side
//! (create, read, update, validation and permissions of `scopes`).

mod common;

use common::{assert_error, Server};
use serde_json::{json, Value};

/// A user with streams `x` (and its child `x-child`) and `secret`; an app access that reads `x`
/// only.
struct Fx {
    s: Server,
    u: String,
    personal: String,
    app: (String, String),
}

impl Fx {
    async fn new() -> Fx {
        let s = Server::start();
        let u = "scopeuser".to_string();
        let personal = s.register(&u).await;
        for body in [
            json!({"id": "x", "name": "X"}),
            json!({"id": "x-child", "name": "X child", "parentId": "x"}),
            json!({"id": "secret", "name": "Secret"}),
        ] {
            let (st, b) = s.post(&format!("/{u}/streams"), &personal, body).await;
            assert_eq!(st, 201, "{b}");
        }
        let app = s
            .access(&u, &personal, json!({"name": "scoped-app", "type": "app", "permissions": [{"streamId": "x", "level": "read"}]}))
            .await;
        Fx { s, u, personal, app }
    }

    fn p(&self, rest: &str) -> String {
        format!("/{}{}", self.u, rest)
    }

    fn wh(&self, id: &str) -> String {
        self.p(&format!("/webhooks/{id}"))
    }

    async fn create(&self, body: Value) -> (u16, Value) {
        self.s.post(&self.p("/webhooks"), &self.app.1, body).await
    }

    async fn get_one(&self, token: &str, id: &str) -> Value {
        let (st, b) = self.s.get(&self.wh(id), token).await;
        assert_eq!(st, 200, "{b}");
        b["webhook"].clone()
    }
}

fn has_key_anywhere(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.contains_key(key) || m.values().any(|x| has_key_anywhere(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key_anywhere(x, key)),
        _ => false,
    }
}

/// [SNWA1] [SNWA2]: scopes come back exactly as given, on create, getOne and get; no `prepared`.
#[tokio::test]
async fn create_scoped_returns_scopes_as_given_snwa1_snwa2() {
    let fx = Fx::new().await;
    let scopes = json!({"s": {"kind": "events", "query": {"streams": ["x"]}}});
    let (st, b) = fx.create(json!({"url": "https://example.com/scoped", "scopes": scopes})).await;
    assert_eq!(st, 201, "{b}");
    let w = &b["webhook"];
    assert_eq!(w["scopes"], scopes, "[SNWA1] {w}");
    assert!(!has_key_anywhere(w, "prepared"), "{w}");
    assert_eq!(w["state"], "active");
    let id = w["id"].as_str().unwrap();
    // [SNWA2]
    let got = fx.get_one(&fx.app.1, id).await;
    assert_eq!(got["scopes"], scopes, "[SNWA2] {got}");
    assert_eq!(&got, w);
    let got = fx.get_one(&fx.personal, id).await;
    assert_eq!(got["scopes"], scopes);
    let (st, b) = fx.s.get(&fx.p("/webhooks"), &fx.app.1).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhooks"][0]["scopes"], scopes, "{b}");
}

/// Richer scopes (several keys, kinds, defaults left out) are kept verbatim.
#[tokio::test]
async fn create_scoped_several_keys_verbatim() {
    let fx = Fx::new().await;
    let scopes = json!({
        "newReadings": {"kind": "events", "query": {"streams": ["x"], "types": ["mass/kg", "note/*"]}},
        "structure": {"kind": "streams", "query": {"streams": ["x"]}},
        "implicit": {"query": {"streams": ["x-child"]}},
        "everything": {"kind": "events"}
    });
    let (st, b) = fx.create(json!({"url": "https://example.com/scoped", "scopes": scopes})).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["webhook"]["scopes"], scopes, "{b}");
    let got = fx.get_one(&fx.app.1, b["webhook"]["id"].as_str().unwrap()).await;
    assert_eq!(got["scopes"], scopes);
}

/// `scopes: {}` or `null` on create means unscoped: no `scopes` key.
#[tokio::test]
async fn create_with_empty_or_null_scopes_is_unscoped() {
    let fx = Fx::new().await;
    for (i, scopes) in [json!({}), Value::Null].into_iter().enumerate() {
        let (st, b) = fx.create(json!({"url": format!("https://example.com/{i}"), "scopes": scopes})).await;
        assert_eq!(st, 201, "{b}");
        assert!(b["webhook"].get("scopes").is_none(), "{b}");
    }
}

/// A stream the access cannot read → 403 forbidden; nothing is created.
#[tokio::test]
async fn create_scope_on_unreadable_stream_forbidden() {
    let fx = Fx::new().await;
    for query in [json!({"streams": ["secret"]}), json!({"streams": ["x", "secret"]})] {
        let (st, b) = fx.create(json!({"url": "https://example.com/s", "scopes": {"s": {"kind": "events", "query": query}}})).await;
        assert_error(st, &b, 403, "forbidden");
    }
    let (st, b) =
        fx.create(json!({"url": "https://example.com/s", "scopes": {"s": {"kind": "streams", "query": {"streams": ["secret"]}}}})).await;
    assert_error(st, &b, 403, "forbidden");
    let (_, b) = fx.s.get(&fx.p("/webhooks"), &fx.personal).await;
    assert_eq!(b["webhooks"], json!([]), "{b}");
}

/// An unknown stream → 400 unknown-referenced-resource.
#[tokio::test]
async fn create_scope_on_unknown_stream() {
    let fx = Fx::new().await;
    let (st, b) =
        fx.create(json!({"url": "https://example.com/s", "scopes": {"s": {"kind": "events", "query": {"streams": ["nope"]}}}})).await;
    assert_error(st, &b, 400, "unknown-referenced-resource");
    let (_, b) = fx.s.get(&fx.p("/webhooks"), &fx.personal).await;
    assert_eq!(b["webhooks"], json!([]), "{b}");
}

/// An unsupported kind or a malformed scope → 400 invalid-request-structure; a `scopes` that is
/// not an object → 400.
#[tokio::test]
async fn create_scope_bad_structure() {
    let fx = Fx::new().await;
    for scopes in [
        json!({"s": {"kind": "bogus", "query": {}}}),
        json!({"s": {"kind": "webhooks", "query": {}}}),
        json!({"s": {"kind": 5}}),
        json!({"s": 5}),
        json!({"s": {"kind": "events", "query": 5}}),
        json!({"s": {"kind": "events", "query": {"foo": 1}}}),
        json!({"s": {"kind": "events", "extra": 1}}),
    ] {
        let (st, b) = fx.create(json!({"url": "https://example.com/s", "scopes": scopes})).await;
        assert_error(st, &b, 400, "invalid-request-structure");
    }
    for scopes in [json!([1]), json!("s"), json!(3)] {
        let (st, b) = fx.create(json!({"url": "https://example.com/s", "scopes": scopes})).await;
        assert_eq!(st, 400, "{b}");
        assert!(b["error"]["id"] == "invalid-parameters-format" || b["error"]["id"] == "invalid-request-structure", "{b}");
    }
    let (_, b) = fx.s.get(&fx.p("/webhooks"), &fx.personal).await;
    assert_eq!(b["webhooks"], json!([]), "{b}");
}

/// Watching accesses needs a personal access: an app token gets 403 on create; a personal token
/// can attach such a scope through update.
#[tokio::test]
async fn accesses_scope_needs_personal_access() {
    let fx = Fx::new().await;
    let acc_scopes = json!({"a": {"kind": "accesses", "query": {"types": ["shared"]}}});
    let (st, b) = fx.create(json!({"url": "https://example.com/a", "scopes": acc_scopes})).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = fx.create(json!({"url": "https://example.com/a"})).await;
    assert_eq!(st, 201, "{b}");
    let id = b["webhook"]["id"].as_str().unwrap().to_string();
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.app.1, json!({"scopes": acc_scopes})).await;
    assert_error(st, &b, 403, "forbidden");
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.personal, json!({"scopes": acc_scopes})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["scopes"], acc_scopes, "{b}");
    // An accesses scope needs streams, types or accessIds.
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.personal, json!({"scopes": {"a": {"kind": "accesses", "query": {}}}})).await;
    assert_error(st, &b, 400, "invalid-request-structure");
    assert_eq!(fx.get_one(&fx.personal, &id).await["scopes"], acc_scopes);
}

/// Update replaces the whole map; `{}` and `null` remove it (no `scopes` key).
#[tokio::test]
async fn update_replaces_and_clears_scopes() {
    let fx = Fx::new().await;
    let first = json!({"s": {"kind": "events", "query": {"streams": ["x"]}}, "t": {"kind": "streams", "query": {"streams": ["x"]}}});
    let (st, b) = fx.create(json!({"url": "https://example.com/u", "scopes": first})).await;
    assert_eq!(st, 201, "{b}");
    let id = b["webhook"]["id"].as_str().unwrap().to_string();

    let second = json!({"other": {"kind": "events", "query": {"streams": ["x-child"], "types": ["note/txt"]}}});
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.app.1, json!({"scopes": second})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["scopes"], second, "{b}");
    assert_eq!(fx.get_one(&fx.app.1, &id).await["scopes"], second);

    // A state-only update keeps the scopes.
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.app.1, json!({"state": "inactive"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["scopes"], second, "{b}");

    for clear in [json!({}), Value::Null] {
        let (st, b) = fx.s.put(&fx.wh(&id), &fx.app.1, json!({"scopes": second})).await;
        assert_eq!(st, 200, "{b}");
        let (st, b) = fx.s.put(&fx.wh(&id), &fx.app.1, json!({"scopes": clear})).await;
        assert_eq!(st, 200, "{b}");
        assert!(b["webhook"].get("scopes").is_none(), "{b}");
        assert!(fx.get_one(&fx.app.1, &id).await.get("scopes").is_none());
    }

    // Scopes and state together.
    let (st, b) = fx.s.put(&fx.wh(&id), &fx.app.1, json!({"scopes": first, "state": "active"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["scopes"], first, "{b}");
    assert_eq!(b["webhook"]["state"], "active", "{b}");
}

/// Update validates scopes like create and answers the real 4xx (not 500); the webhook is
/// unchanged.
#[tokio::test]
async fn update_with_invalid_scopes_answers_4xx() {
    let fx = Fx::new().await;
    let scopes = json!({"s": {"kind": "events", "query": {"streams": ["x"]}}});
    let (st, b) = fx.create(json!({"url": "https://example.com/v", "scopes": scopes})).await;
    assert_eq!(st, 201, "{b}");
    let w = b["webhook"].clone();
    let id = w["id"].as_str().unwrap();
    let cases = [
        (json!({"s": {"query": {"streams": ["secret"]}}}), 403, "forbidden"),
        (json!({"s": {"query": {"streams": ["nope"]}}}), 400, "unknown-referenced-resource"),
        (json!({"s": {"kind": "bogus"}}), 400, "invalid-request-structure"),
    ];
    for (bad, status, err) in cases {
        let (st, b) = fx.s.put(&fx.wh(id), &fx.app.1, json!({"scopes": bad})).await;
        assert_error(st, &b, status, err);
    }
    let (st, b) = fx.s.put(&fx.wh(id), &fx.app.1, json!({"scopes": [1]})).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(fx.get_one(&fx.app.1, id).await, w);
}

/// A personal token may scope an app's webhook on streams the app cannot read (the personal
/// access is the one asking).
#[tokio::test]
async fn personal_update_uses_its_own_permissions() {
    let fx = Fx::new().await;
    let (st, b) = fx.create(json!({"url": "https://example.com/p"})).await;
    assert_eq!(st, 201, "{b}");
    let id = b["webhook"]["id"].as_str().unwrap();
    let scopes = json!({"sec": {"kind": "events", "query": {"streams": ["secret"]}}});
    let (st, b) = fx.s.put(&fx.wh(id), &fx.personal, json!({"scopes": scopes})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["webhook"]["scopes"], scopes);
    assert_eq!(b["webhook"]["accessId"], fx.app.0.as_str());
}
