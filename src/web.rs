//! The web terminal, served at `/` from assets embedded in the binary.
//!
//! Owns: the files of `web/` (compiled in with `include_str!`, so the binary
//! needs no files at run time and the page loads nothing from elsewhere),
//! their content types, and the `not_found` answer for any other asset. Must
//! not touch: anything else — the page talks to the broker through the public
//! API (`/v1/auth/login`, `/v1/ws`) like any other client.

use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::api::json_reply;
use crate::error::ApiError;
use crate::protocol::ErrorCode;

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `/assets/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: HTML,
        body: include_str!("../web/index.html"),
    },
    Asset {
        name: "terminal.js",
        content_type: JS,
        body: include_str!("../web/terminal.js"),
    },
    Asset {
        name: "terminal.css",
        content_type: CSS,
        body: include_str!("../web/terminal.css"),
    },
    Asset {
        name: "mythos-client.js",
        content_type: JS,
        body: include_str!("../web/mythos-client.js"),
    },
];

/// The page only runs its own scripts and talks only to this origin.
const CSP: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// The embedded file called `name`.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

fn serve(a: &'static Asset) -> Response {
    let mut r = warp::reply::with_header(a.body, "content-type", a.content_type).into_response();
    let h = r.headers_mut();
    // Revalidate every time: a rebuilt binary may serve new files under the same names.
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if a.content_type == HTML {
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
    }
    r
}

fn not_found(name: &str) -> Response {
    let shown: String = name.chars().take(64).collect();
    let e = ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no asset named `{shown}`"),
    );
    json_reply(e.status, &e.body())
}

fn page(name: &str) -> Response {
    match asset(name) {
        Some(a) => serve(a),
        None => not_found(name),
    }
}

/// `GET /` (the terminal page) and `GET /assets/{file}`; `HEAD` as well.
pub fn routes() -> BoxedFilter<(Response,)> {
    let get = || warp::get().or(warp::head()).unify();
    let index = warp::path::end().and(get()).map(|| page("index.html"));
    let assets = warp::path!("assets" / String)
        .and(get())
        .map(|name: String| page(&name));
    index.or(assets).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(path: &str) -> (StatusCode, String, String) {
        let r = warp::test::request().path(path).reply(&routes()).await;
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = String::from_utf8_lossy(r.body()).into_owned();
        (r.status(), ct, body)
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets() {
        let (status, ct, body) = get("/").await;
        assert_eq!((status, ct.as_str()), (StatusCode::OK, HTML));
        assert!(body.contains("/assets/terminal.js"));
        for (path, want) in [
            ("/assets/terminal.js", JS),
            ("/assets/terminal.css", CSS),
            ("/assets/mythos-client.js", JS),
        ] {
            let (status, ct, body) = get(path).await;
            assert_eq!((status, ct.as_str()), (StatusCode::OK, want), "{path}");
            assert!(!body.is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_json_404s() {
        let (status, ct, body) = get("/assets/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(ct.starts_with("application/json"), "{ct}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], "not_found");
        assert!(v["error"]["message"].as_str().is_some());
    }

    #[test]
    fn the_page_imports_the_client_library() {
        let js = asset("terminal.js").map(|a| a.body).unwrap_or_default();
        assert!(js.contains("from \"/assets/mythos-client.js\""));
    }
}
