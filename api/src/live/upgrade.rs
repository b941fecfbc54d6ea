//! The WebSocket opening handshake (RFC 6455 §4.2) and the socket it yields.
//!
//! Done here rather than by axum's `WebSocketUpgrade` so that a connection is
//! tokio-tungstenite's own stream: the writer can send a long message as fragments
//! ([`link`](super::link)), so that no connection keeps a write buffer the size of the
//! largest message it was ever sent (tungstenite's buffer keeps its capacity).

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::error::ApiError;

/// An open WebSocket, server side.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Why a request is not a WebSocket opening handshake; one variant per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAHandshake {
    #[error("the request's method must be GET")]
    MethodNotGet,
    #[error("the `Connection` header must name `upgrade`")]
    NoConnectionUpgrade,
    #[error("the `Upgrade` header must be `websocket`")]
    NoUpgradeWebsocket,
    #[error("the `Sec-WebSocket-Version` header must be 13")]
    UnsupportedVersion,
    #[error("the `Sec-WebSocket-Key` header is missing")]
    NoKey,
    #[error("the connection cannot be upgraded (HTTP/1.1 is needed)")]
    NotUpgradable,
}

/// 400 with a problem document saying which rule the request broke.
impl IntoResponse for NotAHandshake {
    fn into_response(self) -> Response {
        let detail = format!("this endpoint only speaks WebSocket: {self}");
        ApiError::bad_request(detail, None).into_response()
    }
}

/// A request that asked to become a WebSocket.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAHandshake;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotAHandshake> {
        if parts.method != Method::GET {
            return Err(NotAHandshake::MethodNotGet);
        }
        if !names_token(&parts.headers, CONNECTION, "upgrade") {
            return Err(NotAHandshake::NoConnectionUpgrade);
        }
        if !is(&parts.headers, UPGRADE, "websocket") {
            return Err(NotAHandshake::NoUpgradeWebsocket);
        }
        if !is(&parts.headers, SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotAHandshake::UnsupportedVersion);
        }
        let key = parts
            .headers
            .get(SEC_WEBSOCKET_KEY)
            .ok_or(NotAHandshake::NoKey)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAHandshake::NotUpgradable)?;
        Ok(Self { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and runs `serve` on the socket once the client switched; when the
    /// switch never happens, `serve` is dropped unrun.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        // Boxed: what `serve` captured would otherwise keep its room in the task for the
        // connection's whole life, beside the future it makes (the task is one allocation
        // of its largest state; `omoi-bench bench-live` measures it per idle connection).
        let serve = Box::new(serve);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = TokioIo::new(upgraded);
            serve(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::try_from(accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// The header's value is `value`, whatever its case.
fn is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|header| header.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// The comma-separated header names `token` among its values, whatever its case.
fn names_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|header| {
        header
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    const HANDSHAKE: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    /// What a request of `method` with the handshake's headers, `changed` replacing (or,
    /// when empty, removing) one, is refused for.
    async fn refusal(method: Method, changed: Option<(&str, &str)>) -> Option<NotAHandshake> {
        let mut request = Request::builder().method(method);
        for (name, value) in HANDSHAKE {
            match changed {
                Some((changed, "")) if changed == name => {}
                Some((changed, other)) if changed == name => request = request.header(name, other),
                _ => request = request.header(name, value),
            }
        }
        let (mut parts, ()) = request.body(()).expect("a request").into_parts();
        Upgrade::from_request_parts(&mut parts, &()).await.err()
    }

    #[tokio::test]
    async fn every_rule_of_the_opening_handshake_is_refused_by_name() {
        use NotAHandshake::*;
        assert_eq!(refusal(Method::POST, None).await, Some(MethodNotGet));
        for (header, value, refused) in [
            ("connection", "", NoConnectionUpgrade),
            ("connection", "keep-alive", NoConnectionUpgrade),
            ("connection", "upgraded", NoConnectionUpgrade),
            ("upgrade", "", NoUpgradeWebsocket),
            ("upgrade", "h2c", NoUpgradeWebsocket),
            ("sec-websocket-version", "8", UnsupportedVersion),
            ("sec-websocket-version", "", UnsupportedVersion),
            ("sec-websocket-key", "", NoKey),
        ] {
            let got = refusal(Method::GET, Some((header, value))).await;
            assert_eq!(got, Some(refused), "{header}: {value:?}");
        }
        // Every header right, but no connection to take over (as outside hyper's server).
        assert_eq!(refusal(Method::GET, None).await, Some(NotUpgradable));
    }

    #[test]
    fn the_accept_key_is_the_rfcs_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
