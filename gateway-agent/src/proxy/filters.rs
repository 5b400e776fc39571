//! What HTTPRoute filters do to a request or response: pure functions on
//! headers and paths, applied by the proxy in the order `HttpFilters` states.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::model::{Cors, HeaderModifier, PathMatch, PathModifier, RequestRedirect};

/// Set replaces, add appends a value, remove deletes (RequestHeaderModifier
/// and ResponseHeaderModifier alike). Names or values that are not valid
/// HTTP are skipped: translate passes them as written.
pub fn modify_headers(headers: &mut HeaderMap, modifier: &HeaderModifier) {
    for (name, value) in &modifier.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &modifier.add {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    for name in &modifier.remove {
        headers.remove(name.as_str());
    }
}

/// The path after `modifier`, for a request that `matched` selected.
/// ReplacePrefixMatch swaps the matched prefix (whole segments) for the
/// replacement, never leaving a double or missing slash.
pub fn modify_path(path: &str, matched: &PathMatch, modifier: &PathModifier) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let PathMatch::Prefix(prefix) = matched else {
                // The spec allows ReplacePrefixMatch only with PathPrefix
                // matches; anything else gets the replacement as the path.
                return replacement.clone();
            };
            let prefix = prefix.trim_end_matches('/');
            let rest = path.get(prefix.len()..).unwrap_or_default();
            let replacement = replacement.trim_end_matches('/');
            let joined = match (replacement.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_string(),
                (_, false) if !rest.starts_with('/') => format!("{replacement}/{rest}"),
                _ => format!("{replacement}{rest}"),
            };
            if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

/// The `Location` of a RequestRedirect. The port is the filter's, else the
/// well-known port of a scheme the filter sets, else the listener's; it is
/// left out when it is the scheme's default (80 for http, 443 for https).
pub fn redirect_location(
    redirect: &RequestRedirect,
    request_scheme: &str,
    request_host: &str,
    listener_port: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or(request_scheme);
    let host = redirect.hostname.as_deref().unwrap_or(request_host);
    let port = match (redirect.port, redirect.scheme.as_deref()) {
        (Some(port), _) => port,
        (None, Some("https")) => 443,
        (None, Some("http")) => 80,
        (None, _) => listener_port,
    };
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]") // an IPv6 address
    } else {
        host.to_string()
    };
    let mut location = if default_port {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{host}:{port}{path}")
    };
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(query);
    }
    location
}

/// Does `origin` (`scheme://host[:port]`) fall under one of `cors.allow_origins`?
/// A pattern's host may start with `*.`: any subdomain, one label or more.
pub fn cors_origin_allowed(cors: &Cors, origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    cors.allow_origins.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        if pattern == "*" || pattern == origin {
            return true;
        }
        let Some((scheme, host)) = pattern.split_once("://") else {
            return false;
        };
        let Some(suffix) = host.strip_prefix('*') else {
            return false;
        };
        origin
            .strip_prefix(scheme)
            .and_then(|o| o.strip_prefix("://"))
            .is_some_and(|o| o.len() > suffix.len() && o.ends_with(suffix))
    })
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Headers every answer to an allowed cross-origin request carries. The
/// origin is echoed (never `*`), which is valid with or without credentials.
pub fn cors_response_headers(cors: &Cors, origin: &str, headers: &mut HeaderMap) {
    insert(headers, "access-control-allow-origin", origin);
    if cors.allow_credentials {
        insert(headers, "access-control-allow-credentials", "true");
    }
    if !cors.expose_headers.is_empty() {
        insert(
            headers,
            "access-control-expose-headers",
            &cors.expose_headers.join(", "),
        );
    }
}

/// The answer's headers to an allowed preflight (OPTIONS with
/// Access-Control-Request-Method). A `*` list echoes what the request asks
/// for: with credentials a literal `*` would not be honoured by browsers.
pub fn cors_preflight_headers(
    cors: &Cors,
    origin: &str,
    requested_method: &str,
    requested_headers: Option<&str>,
    headers: &mut HeaderMap,
) {
    cors_response_headers(cors, origin, headers);
    let methods = if cors.allow_methods.iter().any(|m| m == "*") {
        requested_method.to_string()
    } else {
        cors.allow_methods.join(", ")
    };
    if !methods.is_empty() {
        insert(headers, "access-control-allow-methods", &methods);
    }
    let allowed_headers = if cors.allow_headers.iter().any(|h| h == "*") {
        requested_headers.unwrap_or_default().to_string()
    } else {
        cors.allow_headers.join(", ")
    };
    if !allowed_headers.is_empty() {
        insert(headers, "access-control-allow-headers", &allowed_headers);
    }
    if let Some(age) = cors.max_age_seconds {
        insert(headers, "access-control-max-age", &age.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], methods: &[&str], headers: &[&str], credentials: bool) -> Cors {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Cors {
            allow_origins: list(origins),
            allow_methods: list(methods),
            allow_headers: list(headers),
            expose_headers: vec!["x-header-3".into()],
            allow_credentials: credentials,
            max_age_seconds: Some(3600),
        }
    }

    #[test]
    fn cors_origins_match_exactly_or_by_subdomain_wildcard() {
        let c = cors(
            &["https://www.foo.com", "https://*.bar.com"],
            &[],
            &[],
            false,
        );
        assert!(cors_origin_allowed(&c, "https://www.foo.com"));
        assert!(cors_origin_allowed(&c, "https://www.bar.com"));
        assert!(cors_origin_allowed(&c, "https://xpto.www.bar.com"));
        assert!(!cors_origin_allowed(&c, "https://bar.com"));
        assert!(!cors_origin_allowed(&c, "http://www.bar.com"));
        assert!(!cors_origin_allowed(&c, "https://foobar.com"));
        assert!(!cors_origin_allowed(&c, "https://www.foo.com:8443"));
        assert!(cors_origin_allowed(
            &cors(&["*"], &[], &[], false),
            "https://x:1"
        ));
    }

    #[test]
    fn cors_preflight_lists_or_echoes_what_is_allowed() {
        let mut h = HeaderMap::new();
        let c = cors(
            &["*"],
            &["GET", "OPTIONS"],
            &["x-header-1", "x-header-2"],
            true,
        );
        cors_preflight_headers(&c, "https://a.example", "GET", None, &mut h);
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        assert_eq!(h["access-control-allow-methods"], "GET, OPTIONS");
        assert_eq!(h["access-control-allow-headers"], "x-header-1, x-header-2");
        assert_eq!(h["access-control-expose-headers"], "x-header-3");
        assert_eq!(h["access-control-max-age"], "3600");
        assert_eq!(h["access-control-allow-credentials"], "true");

        let mut h = HeaderMap::new();
        let c = cors(&["*"], &["*"], &["*"], false);
        cors_preflight_headers(&c, "https://a.example", "PUT", Some("x-a, x-b"), &mut h);
        assert_eq!(h["access-control-allow-methods"], "PUT");
        assert_eq!(h["access-control-allow-headers"], "x-a, x-b");
        assert!(!h.contains_key("access-control-allow-credentials"));
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }

    #[test]
    fn prefix_replacement_keeps_the_rest_of_the_path() {
        let replace = |path: &str, matched: &str, with: &str| {
            modify_path(
                path,
                &prefix(matched),
                &PathModifier::ReplacePrefixMatch(with.into()),
            )
        };
        // The conformance cases of HTTPRouteRewritePath and HTTPRouteRedirectPath.
        assert_eq!(
            replace("/prefix/one/two", "/prefix/one", "/one"),
            "/one/two"
        );
        assert_eq!(
            replace("/strip-prefix/three", "/strip-prefix", "/"),
            "/three"
        );
        assert_eq!(replace("/strip-prefix", "/strip-prefix", "/"), "/");
        assert_eq!(
            replace(
                "/original-prefix/lemon",
                "/original-prefix",
                "/replacement-prefix"
            ),
            "/replacement-prefix/lemon"
        );
        assert_eq!(replace("/a/", "/a/", "/b"), "/b/");
        assert_eq!(replace("/x/y", "/", "/z"), "/z/x/y");
        assert_eq!(
            modify_path(
                "/full/one/two",
                &prefix("/full/one"),
                &PathModifier::ReplaceFullPath("/one".into())
            ),
            "/one"
        );
    }

    fn redirect(scheme: Option<&str>, port: Option<u16>) -> RequestRedirect {
        RequestRedirect {
            scheme: scheme.map(str::to_string),
            hostname: Some("example.org".into()),
            port,
            path: None,
            status: 302,
        }
    }

    #[test]
    fn redirect_ports_follow_the_spec() {
        let at = |r: &RequestRedirect, scheme: &str, listener: u16| {
            redirect_location(r, scheme, "h", listener, "/p", None)
        };
        // HTTPRouteRedirectPortAndScheme, listener on 80, 8080 and 443.
        assert_eq!(
            at(&redirect(None, None), "http", 80),
            "http://example.org/p"
        );
        assert_eq!(
            at(&redirect(None, Some(80)), "http", 80),
            "http://example.org/p"
        );
        assert_eq!(
            at(&redirect(None, Some(8080)), "http", 80),
            "http://example.org:8080/p"
        );
        assert_eq!(
            at(&redirect(Some("https"), None), "http", 80),
            "https://example.org/p"
        );
        assert_eq!(
            at(&redirect(Some("https"), Some(8443)), "http", 80),
            "https://example.org:8443/p"
        );
        assert_eq!(
            at(&redirect(None, None), "http", 8080),
            "http://example.org:8080/p"
        );
        assert_eq!(
            at(&redirect(Some("https"), None), "http", 8080),
            "https://example.org/p"
        );
        assert_eq!(
            at(&redirect(None, None), "https", 443),
            "https://example.org/p"
        );
        assert_eq!(
            at(&redirect(Some("http"), None), "https", 443),
            "http://example.org/p"
        );
        let keep_host = RequestRedirect {
            hostname: None,
            ..redirect(None, None)
        };
        assert_eq!(
            redirect_location(&keep_host, "http", "a.example", 80, "/x", Some("q=1")),
            "http://a.example/x?q=1"
        );
    }

    #[test]
    fn header_modifier_sets_adds_and_removes() {
        let mut headers = HeaderMap::new();
        headers.insert("x-set", HeaderValue::from_static("old"));
        headers.insert("x-add", HeaderValue::from_static("first"));
        headers.insert("x-remove", HeaderValue::from_static("gone"));
        modify_headers(
            &mut headers,
            &HeaderModifier {
                set: vec![("x-set".into(), "new".into())],
                add: vec![
                    ("x-add".into(), "second".into()),
                    ("x-fresh".into(), "v".into()),
                ],
                remove: vec!["x-remove".into()],
            },
        );
        assert_eq!(headers["x-set"], "new");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["first", "second"]);
        assert_eq!(headers["x-fresh"], "v");
        assert!(!headers.contains_key("x-remove"));
    }
}
