//! Herald's web pages: the consent page of access requests (`/auth`, the `authUrl` of every
//! request) and the webhooks console (`/www/webhooks`), with the assets Pryv's browser sign-in
//! button reads (`/www/assets/index.json`). Guide: docs/web.md.
//!
//! The pages are plain HTML, CSS and JavaScript compiled into the binary (`include_str!`): no
//! CDN, no build step, nothing fetched from elsewhere. They call Herald's own API with `fetch`,
//! exactly as any app would; the token lives in the page's memory only, never in a URL (the
//! socket.io connection carries it in its connect payload, not its query).
//!
//! Every page is served with a strict Content-Security-Policy: scripts, styles and connections
//! from this origin only, no inline script or style, and `frame-ancestors 'none'` (with
//! `X-Frame-Options: DENY` for older browsers) so no other site can frame a sign-in form.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
    /// An HTML page (as opposed to a script, a style sheet or data): not cached.
    pub page: bool,
}

const fn page(body: &'static str) -> Asset {
    Asset { content_type: "text/html; charset=utf-8", body, page: true }
}
const fn file(content_type: &'static str, body: &'static str) -> Asset {
    Asset { content_type, body, page: false }
}

static CONSENT: Asset = page(include_str!("assets/consent.html"));
static CONSOLE: Asset = page(include_str!("assets/console.html"));
static CSS: Asset = file("text/css; charset=utf-8", include_str!("assets/herald.css"));
static COMMON_JS: Asset = file("text/javascript; charset=utf-8", include_str!("assets/common.js"));
static CONSENT_JS: Asset = file("text/javascript; charset=utf-8", include_str!("assets/consent.js"));
static CONSOLE_JS: Asset = file("text/javascript; charset=utf-8", include_str!("assets/console.js"));
static SOCKET_JS: Asset = file("text/javascript; charset=utf-8", include_str!("assets/socket.js"));
static FAVICON: Asset = file("image/svg+xml", include_str!("assets/favicon.svg"));
static ASSETS_INDEX: Asset = file("application/json", include_str!("assets/index.json"));
static BUTTON_CSS: Asset = file("text/css; charset=utf-8", include_str!("assets/button.css"));
static BUTTON_HTML: Asset = file("text/html; charset=utf-8", include_str!("assets/button.html"));
static BUTTON_MESSAGES: Asset = file("application/json", include_str!("assets/messages.json"));

/// The asset at this path (segments after the host), if any.
pub fn asset(segs: &[&str]) -> Option<&'static Asset> {
    Some(match segs {
        ["auth"] | ["auth", ""] => &CONSENT,
        ["www", "webhooks"] | ["www", "webhooks", ""] => &CONSOLE,
        ["www", "herald.css"] => &CSS,
        ["www", "common.js"] => &COMMON_JS,
        ["www", "consent.js"] => &CONSENT_JS,
        ["www", "console.js"] => &CONSOLE_JS,
        ["www", "socket.js"] => &SOCKET_JS,
        ["www", "assets", "favicon.svg"] => &FAVICON,
        ["www", "assets", "index.json"] => &ASSETS_INDEX,
        ["www", "assets", "button.css"] => &BUTTON_CSS,
        ["www", "assets", "button.html"] => &BUTTON_HTML,
        ["www", "assets", "messages.json"] => &BUTTON_MESSAGES,
        _ => return None,
    })
}

/// What a page may load and do: only this origin's scripts, styles, images and connections
/// (`'self'` covers its WebSocket too); no inline code, no plugins, no forms posted elsewhere,
/// never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn response(a: &Asset) -> Response<Body> {
    let mut r = Response::new(Body::from(a.body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The consent page's URL holds the request's key: never sent on to another site.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    let cache = if a.page { "no-store" } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}
