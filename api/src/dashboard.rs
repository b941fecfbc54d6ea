//! The dashboard, served from the files `omoi-web` embeds: every page of the app (`/`,
//! `/signin`, `/p/{project}/…`) answers with the same HTML, which loads the modules of
//! this build from `/app/{build}/…`; `/docs` is Swagger UI from the same files. The HTML is revalidated on every load; the modules
//! are immutable under their build's hash.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// What the app's pages may load: only this origin's files and sockets (`'self'` covers
/// its `ws:`/`wss:` address), nothing inline.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `/docs` also loads Swagger UI's stylesheet, whose React components set inline styles.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/docs", get(docs))
        .route("/", get(page))
        .route("/signin", get(page))
        .route("/p/{*view}", get(page))
        .route("/app/{build}/{*file}", get(file))
}

/// The app's page. `no-cache`: a new build's page (and so its modules) is picked up at
/// the next load.
async fn page() -> Response {
    html(omoi_web::index_html(), CONTENT_SECURITY_POLICY)
}

/// Swagger UI for `/openapi.json`, from the vendored files: no CDN.
async fn docs() -> Response {
    html(omoi_web::docs_html(), DOCS_CONTENT_SECURITY_POLICY)
}

fn html(body: String, policy: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// One file of build `build`; another build's files are gone (404), as after a deploy.
async fn file(path: Result<Path<(String, String)>, PathRejection>, request: HeaderMap) -> Response {
    // A path that does not decode (`%FF`) names no file either.
    let Ok(Path((build, name))) = path else {
        return ApiError::NotFound { what: "file" }.into_response();
    };
    let asset = match omoi_web::asset(&name) {
        Some(asset) if build == omoi_web::BUILD && !omoi_web::is_page(&name) => asset,
        _ => return ApiError::NotFound { what: "file" }.into_response(),
    };
    let etag = format!("\"{}\"", omoi_web::BUILD);
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.bytes).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
