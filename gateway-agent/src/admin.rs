//! The admin listener: `/healthz` (the process answers), `/readyz` (the first
//! configuration is applied and the source is healthy) and `/metrics`
//! (Prometheus text format), `/state` (what is served, as JSON, for
//! `gateway-agent inspect`) and `/explain?request=…&header=…` (what a request
//! would take, for `gateway-agent explain --admin-address`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;

pub struct AdminState {
    pub registry: Registry,
    pub ready: AtomicBool,
    /// Why the configuration may be stale (e.g. the API server is unreachable):
    /// the last good one keeps serving, and readiness says so.
    pub degraded: Mutex<Option<String>>,
    /// Answers `/state`; set once the node's data planes run.
    pub state: std::sync::OnceLock<Arc<crate::inspect::StateSource>>,
}

fn respond(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn handle<B>(req: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => {
            match state.degraded.lock().expect("admin lock").as_ref() {
                None => respond(StatusCode::OK, "text/plain", "ready\n".into()),
                Some(why) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("degraded: {why}; serving the last good configuration\n"),
                ),
            }
        }
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no configuration applied yet\n".into(),
        ),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        "/state" => match state.state.get() {
            Some(source) => match serde_json::to_string(&source.state()) {
                Ok(json) => respond(StatusCode::OK, "application/json", json),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding failed: {e}\n"),
                ),
            },
            None => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "the data planes are not running yet\n".into(),
            ),
        },
        "/explain" => explain(req.uri().query().unwrap_or_default(), state),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// `/explain?request=GET%20http://host/path&header=name:%20value`: the
/// request is explained against the last applied configuration.
fn explain(query: &str, state: &AdminState) -> Response<Full<Bytes>> {
    let mut request = None;
    let mut headers = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "request" => request = Some(value.into_owned()),
            "header" => headers.push(value.into_owned()),
            _ => {}
        }
    }
    let Some(request) = request else {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing ?request=\n".into(),
        );
    };
    let Some(source) = state.state.get() else {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the data planes are not running yet\n".into(),
        );
    };
    match source.explain(&request, &headers) {
        None => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no configuration applied yet\n".into(),
        ),
        Some(Err(e)) => respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e:#}\n")),
        Some(Ok(explanation)) => match serde_json::to_string(&explanation) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("encoding failed: {e}\n"),
            ),
        },
    }
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin listener bound (/healthz, /readyz, /metrics, /state, /explain)");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = handle(&req, &state);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(state: &AdminState, path: &str) -> StatusCode {
        handle(&Request::get(path).body(()).expect("request"), state).status()
    }

    #[test]
    fn ready_only_after_the_first_apply() {
        let state = AdminState {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            degraded: Mutex::default(),
            state: std::sync::OnceLock::new(),
        };
        assert_eq!(get(&state, "/healthz"), StatusCode::OK);
        assert_eq!(get(&state, "/state"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&state, "/explain"), StatusCode::BAD_REQUEST);
        assert_eq!(
            get(&state, "/explain?request=GET%20http://a/"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&state, "/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&state, "/readyz"), StatusCode::OK);
        *state.degraded.lock().expect("lock") = Some("API server unreachable".into());
        assert_eq!(get(&state, "/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        *state.degraded.lock().expect("lock") = None;
        assert_eq!(get(&state, "/readyz"), StatusCode::OK);
        assert_eq!(get(&state, "/metrics"), StatusCode::OK);
        assert_eq!(get(&state, "/other"), StatusCode::NOT_FOUND);
    }

    #[test]
    fn explain_answers_from_the_last_applied_output() {
        let passthrough = crate::passthrough::Passthrough::new(
            crate::passthrough::SpliceMode::Copy,
            std::path::Path::new("/nonexistent"),
        )
        .expect("copy mode needs no kernel support");
        let source = Arc::new(crate::inspect::StateSource::new(
            Arc::default(),
            Arc::new(passthrough),
        ));
        let state = AdminState {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            degraded: Mutex::default(),
            state: std::sync::OnceLock::new(),
        };
        let _ = state.state.set(source.clone());
        let path =
            "/explain?request=GET%20http%3A%2F%2F127.0.0.1%3A8080%2Fa&header=Host%3A%20a.example";
        assert_eq!(get(&state, path), StatusCode::SERVICE_UNAVAILABLE);
        source.applied(crate::translate::Output::default(), 1);
        let response = handle(&Request::get(path).body(()).expect("request"), &state);
        assert_eq!(response.status(), StatusCode::OK);
        let body =
            futures::executor::block_on(http_body_util::BodyExt::collect(response.into_body()))
                .expect("body")
                .to_bytes();
        let explanation: crate::explain::Explanation =
            serde_json::from_slice(&body).expect("an Explanation in JSON");
        assert_eq!(explanation.request, "GET http://127.0.0.1:8080/a");
        assert_eq!(
            explanation.outcome,
            "no HTTP listener serves port 8080: the connection is refused"
        );
        assert_eq!(
            get(&state, "/explain?request=ftp%3A%2F%2Fx%3A1"),
            StatusCode::BAD_REQUEST
        );
    }
}
