//! The support console of SPEC section 15: a page and its script and style sheet, embedded in
//! the binary so `ledger serve` needs no build step, no files beside it and no outside network.
//! Every file goes out with a strict Content-Security-Policy: the page may load only its own
//! script and style and talk only to this server, so a token pasted into it cannot leak through
//! an injected script or a third-party request.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// What the console may do in the browser: nothing inline, nothing from elsewhere. `data:`
/// images only for the favicon the page declares (so the browser does not ask for one).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// One embedded file with the console's headers. `no-cache` rather than a long lifetime: the
/// files change with the binary, and revalidating them costs nothing on a support desk.
fn embedded(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub(super) async fn page() -> Response {
    embedded("text/html; charset=utf-8", INDEX_HTML)
}

pub(super) async fn script() -> Response {
    embedded("application/javascript; charset=utf-8", APP_JS)
}

pub(super) async fn style() -> Response {
    embedded("text/css; charset=utf-8", APP_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSP forbids inline code, so the embedded files must not need any: a `style=` or an
    /// inline `<script>`/`<style>` would be silently blocked in the browser.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = INDEX_HTML.to_ascii_lowercase();
        assert!(!html.contains("style="), "an inline style attribute");
        assert!(!html.contains("<style"), "an inline style element");
        let handler = html.split_whitespace().find(|word| {
            word.strip_prefix("on").is_some_and(|rest| {
                rest.split('=').next().is_some_and(|name| {
                    !name.is_empty()
                        && name.len() < rest.len()
                        && name.bytes().all(|b| b.is_ascii_lowercase())
                })
            })
        });
        assert_eq!(handler, None, "an inline event handler");
        for script in html.split("<script").skip(1) {
            let open = script.split('>').next().unwrap_or_default();
            assert!(open.contains("src="), "an inline script: <script{open}>");
        }
        assert!(!APP_JS.contains("innerHTML"), "markup built from strings");
    }

    #[tokio::test]
    async fn every_file_carries_the_policy_and_nosniff() {
        for response in [page().await, script().await, style().await] {
            let headers = response.headers();
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }
}
