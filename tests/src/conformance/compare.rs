//! `CompareRoundTrip` of `conformance/utils/http/http.go`: is an HTTP response
//! what a case's `effective` expectation says?

use serde_json::Value;

use super::client::HttpResponse;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 300..=305 | 307 | 308)
}

/// The fields echo-basic returns. When the body is not its JSON, every field
/// is empty except the method, which is the request's own: the Go suite's
/// `CaptureRoundTrip` (conformance/utils/roundtripper) sets
/// `cReq.Method = method` when the response's Content-Type is not
/// `application/json` ("assume it made the right request if the service being
/// called isn't echoing"), so a preflight the gateway answers itself passes
/// the method check.
struct Echoed {
    json: Value,
}

impl Echoed {
    fn new(response: &HttpResponse, request_method: &str) -> Echoed {
        let is_json = response
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/json");
        let json = if is_json {
            serde_json::from_slice(&response.body).unwrap_or(Value::Null)
        } else {
            serde_json::json!({ "method": request_method })
        };
        Echoed { json }
    }

    fn field(&self, name: &str) -> &str {
        s(&self.json[name])
    }

    /// A request header as the backend saw it, values joined with `,`.
    fn header(&self, name: &str) -> Option<String> {
        let headers = self.json.get("headers")?.as_object()?;
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| {
                v.as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            })
    }
}

fn response_header(response: &HttpResponse, name: &str) -> Option<String> {
    let values: Vec<&str> = response
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Checks a response against `effective`. `request_path` is the path and
/// query actually sent (with `{uuid}` filled in); `expected_path` the
/// backend-side path with the same substitution.
pub fn compare(
    eff: &Value,
    response: &HttpResponse,
    expected_path: &str,
    request_scheme: &str,
    client_cert_pem: Option<&str>,
) -> Result<(), String> {
    let codes: Vec<u16> = eff["status_codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_u64())
                .map(|c| c as u16)
                .collect()
        })
        .unwrap_or_else(|| vec![200]);
    let status = response.status;
    let timeout_codes = |c: &u16| *c == 408 || *c == 504;
    let timeout_pass = timeout_codes(&status) && codes.iter().any(timeout_codes);
    if !(codes.contains(&status) || timeout_pass) {
        return Err(format!("expected status {codes:?}, got {status}"));
    }
    if status == 200 || status == 204 {
        return compare_echo(eff, response, expected_path, client_cert_pem);
    }
    if is_redirect(status)
        && let Some(redirect) = eff.get("redirect").filter(|r| !r.is_null())
    {
        return compare_redirect(redirect, response, request_scheme);
    }
    Ok(())
}

fn compare_echo(
    eff: &Value,
    response: &HttpResponse,
    expected_path: &str,
    client_cert_pem: Option<&str>,
) -> Result<(), String> {
    // The Go client sends GET when a case names no method.
    let request_method = eff["method"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or("GET");
    let echoed = Echoed::new(response, request_method);
    let exp = &eff["expected_backend_request"];
    if let Some(host) = exp["host"].as_str().filter(|h| !h.is_empty())
        && echoed.field("host") != host
    {
        return Err(format!(
            "backend saw host {:?}, expected {host:?}",
            echoed.field("host")
        ));
    }
    if echoed.field("path") != expected_path {
        return Err(format!(
            "backend saw path {:?}, expected {expected_path:?}",
            echoed.field("path")
        ));
    }
    if let Some(method) = exp["method"].as_str()
        && echoed.field("method") != method
    {
        return Err(format!(
            "backend saw method {:?}, expected {method:?}",
            echoed.field("method")
        ));
    }
    let namespace = s(&eff["namespace"]);
    if echoed.field("namespace") != namespace {
        return Err(format!(
            "backend namespace {:?}, expected {namespace:?}",
            echoed.field("namespace")
        ));
    }
    for (name, value) in exp["headers"].as_object().into_iter().flatten() {
        let expected = s(value);
        match echoed.header(name) {
            Some(actual) if actual == expected => {}
            Some(actual) => {
                return Err(format!(
                    "backend saw header {name}: {actual:?}, expected {expected:?}"
                ));
            }
            None => return Err(format!("backend did not see header {name}")),
        }
    }
    if let Some(port) = exp["http_port"].as_str()
        && echoed.field("httpPort") != port
    {
        return Err(format!(
            "backend httpPort {:?}, expected {port:?}",
            echoed.field("httpPort")
        ));
    }
    let squash = |v: &str| {
        if eff["ignore_whitespace_in_response_headers"].as_bool() == Some(true) {
            v.replace(' ', "")
        } else {
            v.to_string()
        }
    };
    for (name, value) in eff["response_headers"].as_object().into_iter().flatten() {
        let expected = s(value);
        match response_header(response, name) {
            Some(actual) if squash(&actual) == squash(expected) => {}
            Some(actual) => {
                return Err(format!(
                    "response header {name}: {actual:?}, expected {expected:?}"
                ));
            }
            None => return Err(format!("response header {name} missing")),
        }
    }
    for (name, values) in eff["response_header_one_of"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let allowed: Vec<&str> = values.as_array().into_iter().flatten().map(s).collect();
        let actual = response_header(response, name).unwrap_or_default();
        if !allowed.contains(&actual.as_str()) {
            return Err(format!(
                "response header {name}: {actual:?}, expected one of {allowed:?}"
            ));
        }
    }
    for name in eff["absent_response_headers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if response.headers.contains_key(s(name)) {
            return Err(format!("response header {} should be absent", s(name)));
        }
    }
    for name in exp["absent_headers"].as_array().into_iter().flatten() {
        if echoed.header(s(name)).is_some() {
            return Err(format!(
                "backend saw header {} that should be absent",
                s(name)
            ));
        }
    }
    let prefix = s(&eff["backend_pod_prefix"]);
    if !echoed.field("pod").starts_with(prefix) {
        return Err(format!(
            "answered by pod {:?}, expected a pod of {prefix:?}",
            echoed.field("pod")
        ));
    }
    if let Some(sni) = exp["sni"].as_str() {
        let seen = s(&echoed.json["tls"]["serverName"]);
        if seen != sni {
            return Err(format!("backend saw SNI {seen:?}, expected {sni:?}"));
        }
    }
    // `true`, or `{fromSecret: ...}` naming the certificate (resolved by the caller).
    let presented = &exp["client_certificate_presented"];
    if presented.as_bool() == Some(true) || presented.is_object() {
        let peers: Vec<&str> = echoed.json["tls"]["peerCertificates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let wanted = client_cert_pem.map(str::trim);
        if !peers.iter().any(|p| Some(p.trim()) == wanted) {
            return Err("backend did not see the client certificate".into());
        }
    }
    if let Some(protocol) = eff["response_protocol"].as_str()
        && response.version != protocol
    {
        return Err(format!(
            "response protocol {}, expected {protocol}",
            response.version
        ));
    }
    Ok(())
}

/// Scheme, host, port and path of a `Location` (absolute or relative to the
/// request).
pub fn parse_location(location: &str, request_scheme: &str) -> (String, String, String, String) {
    let (scheme, rest) = match location.split_once("://") {
        Some((scheme, rest)) => (scheme.to_string(), rest),
        None => {
            let path = location.split(['?', '#']).next().unwrap_or("");
            return (
                request_scheme.to_string(),
                String::new(),
                String::new(),
                path.into(),
            );
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, p),
        _ => (authority, ""),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    (scheme, host.to_string(), port.to_string(), path.to_string())
}

fn compare_redirect(
    redirect: &Value,
    response: &HttpResponse,
    request_scheme: &str,
) -> Result<(), String> {
    let location = response_header(response, "location")
        .ok_or_else(|| format!("redirect {} without a Location", response.status))?;
    let (scheme, host, port, path) = parse_location(&location, request_scheme);
    let want_scheme = redirect["scheme"].as_str().unwrap_or(request_scheme);
    if scheme != want_scheme {
        return Err(format!(
            "redirect to {location}: scheme {scheme}, expected {want_scheme}"
        ));
    }
    if let Some(h) = redirect["host"].as_str()
        && host != h
    {
        return Err(format!(
            "redirect to {location}: host {host:?}, expected {h:?}"
        ));
    }
    match redirect["port"]
        .as_str()
        .map(str::to_string)
        .or_else(|| redirect["port"].as_u64().map(|p| p.to_string()))
    {
        Some(p) if port != p => {
            return Err(format!(
                "redirect to {location}: port {port:?}, expected {p:?}"
            ));
        }
        Some(_) => {}
        None => {
            let default = if scheme == "https" { "443" } else { "80" };
            if !port.is_empty() && port != default {
                return Err(format!(
                    "redirect to {location}: port {port:?}, expected none or {default}"
                ));
            }
        }
    }
    if let Some(p) = redirect["path"].as_str()
        && path != p
    {
        return Err(format!(
            "redirect to {location}: path {path:?}, expected {p:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("https://example.org:8443/a/b?x=1", "http"),
            (
                "https".into(),
                "example.org".into(),
                "8443".into(),
                "/a/b".into()
            )
        );
        assert_eq!(
            parse_location("/only/path", "http"),
            ("http".into(), "".into(), "".into(), "/only/path".into())
        );
    }

    fn response(status: u16, location: Option<&str>) -> HttpResponse {
        let mut headers = hyper::HeaderMap::new();
        if let Some(l) = location {
            headers.insert("location", l.parse().expect("header"));
        }
        HttpResponse {
            status,
            version: "HTTP/1.1",
            headers,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn status_and_redirect_rules() {
        let eff = serde_json::json!({
            "status_codes": [302],
            "redirect": {"scheme": "http", "host": "example.org", "port": null, "path": "/p"},
        });
        assert!(
            compare(
                &eff,
                &response(302, Some("http://example.org/p")),
                "/",
                "http",
                None
            )
            .is_ok()
        );
        assert!(
            compare(
                &eff,
                &response(302, Some("http://example.org:8080/p")),
                "/",
                "http",
                None
            )
            .is_err()
        );
        assert!(
            compare(
                &eff,
                &response(301, Some("http://example.org/p")),
                "/",
                "http",
                None
            )
            .is_err()
        );
        // A 504 passes where a 408 is expected.
        let timeout = serde_json::json!({"status_codes": [408]});
        assert!(compare(&timeout, &response(504, None), "/", "http", None).is_ok());
    }

    #[test]
    fn a_certificate_from_a_secret_must_be_among_the_backend_peer_certificates() {
        let eff = serde_json::json!({
            "status_codes": [200],
            "expected_backend_request": {"path": "/", "client_certificate_presented":
                {"fromSecret": {"kind": "Secret", "namespace": "ns", "name": "c", "key": "tls.crt"}}},
        });
        let echo = |peers: &[&str]| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("content-type", "application/json".parse().expect("header"));
            let body = serde_json::json!({"path": "/", "tls": {"peerCertificates": peers}});
            HttpResponse {
                status: 200,
                version: "HTTP/1.1",
                headers,
                body: bytes::Bytes::from(body.to_string()),
            }
        };
        let wanted = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let other = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        let check = |peers: &[&str]| compare(&eff, &echo(peers), "/", "http", Some(wanted));
        assert!(check(&[wanted]).is_ok());
        assert!(check(&[other]).is_err());
        assert!(check(&[]).is_err());
    }

    #[test]
    fn a_response_that_is_not_echo_json_carries_the_request_method() {
        // A preflight the gateway answers itself: 204, no JSON body.
        let preflight = serde_json::json!({
            "method": "OPTIONS",
            "status_codes": [200, 204],
            "expected_backend_request": {"path": "", "method": "OPTIONS"},
        });
        assert_eq!(
            compare(&preflight, &response(204, None), "", "http", None),
            Ok(())
        );
        // The method check still bites: the request's own method is not the expected one.
        let mismatch = serde_json::json!({
            "method": "GET",
            "status_codes": [204],
            "expected_backend_request": {"path": "", "method": "OPTIONS"},
        });
        assert!(compare(&mismatch, &response(204, None), "", "http", None).is_err());
        // An echoed JSON body is read as it is: its method wins.
        let mut echoed = response(200, None);
        echoed
            .headers
            .insert("content-type", "application/json".parse().expect("header"));
        echoed.body = bytes::Bytes::from_static(br#"{"method":"GET","path":""}"#);
        assert!(compare(&preflight, &echoed, "", "http", None).is_err());
    }
}
