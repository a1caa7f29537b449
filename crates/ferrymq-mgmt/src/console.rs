//! The web console: static HTML, CSS and ES modules from `crates/ferrymq-mgmt/console/`,
//! compiled into the binary and served on the management listener at `/` (the console
//! then talks to `/api/...` like any other client).
//!
//! Files are answered with an `ETag` and `Cache-Control: no-cache`: browsers keep them but
//! ask again each load, so an upgraded broker never runs with a stale script (the files have
//! no versioned names, and ES module imports cannot carry one).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::OnceLock;

/// One embedded file: its path under `/`, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $ct:expr) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/table.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/pages/overview.js", JS),
    asset!("js/pages/lists.js", JS),
    asset!("js/pages/queue.js", JS),
    asset!("js/pages/exchange.js", JS),
    asset!("js/pages/admin.js", JS),
    asset!("js/pages/trace.js", JS),
    asset!("vendor/uplot/uPlot.esm.js", JS),
    asset!("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
];

/// The console's scripts and styles come from this listener only; inline styles stay
/// allowed because uPlot positions its legend and cursor with them.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Each asset's entity tag: a hash of its bytes and the broker's version, computed once.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                // FNV-1a: stable across builds and runs, unlike std's RandomState.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in env!("CARGO_PKG_VERSION").as_bytes().iter().chain(a.body) {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
                format!("\"{h:016x}\"")
            })
            .collect()
    })
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return crate::error::ApiError::NotFound.into_response();
    };
    let (asset, tag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The console's routes: `/` (the app), `/index.html` and the files it loads. Everything
/// else falls through to the API's router (whose unknown paths stay JSON 404s).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/console/{*path}",
            get(|Path(p): Path<String>, h: HeaderMap| async move { serve(&p, &h) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_etag_and_the_app_is_html() {
        let tags = etags();
        let mut unique: Vec<&String> = tags.iter().collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ASSETS.len());
        let r = serve("index.html", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
    }

    #[test]
    fn a_matching_etag_is_not_modified_and_unknown_files_are_404() {
        let tag = etags()[1].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).unwrap());
        assert_eq!(serve("style.css", &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
