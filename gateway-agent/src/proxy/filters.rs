//! What HTTPRoute filters do to a request or response: pure functions on
//! headers and paths, applied by the proxy in the order `HttpFilters` states.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::model::{HeaderModifier, PathMatch, PathModifier, RequestRedirect};

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

#[cfg(test)]
mod tests {
    use super::*;

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
