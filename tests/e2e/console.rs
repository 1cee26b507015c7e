//! The support console (SPEC section 15) in a real browser: Debian's headless Chromium driven
//! through chromedriver with the `fantoccini` WebDriver client. The page is loaded from the
//! real server, a token and an account id are typed in, and what it shows is held to the API's
//! own answers. Without chromium/chromedriver the browser tests print a note and pass, except
//! under `CI`, where they fail: CI installs both (`.ci/run`).

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{
    charge, charge_body, ledger_command, open, subscribe, top_up, Api, Body, Role, Server,
};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page may take to show what a test waits for.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the browser is here; `false` (after a loud note) when a developer's machine lacks
/// it. Under `CI` a missing browser fails the test: a skipped browser test proves nothing.
fn browser_available(test: &str) -> bool {
    let missing: Vec<&str> = [CHROMEDRIVER, CHROMIUM]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let note = format!(
        "{test}: {} missing; install Debian's `chromium` and `chromium-driver` \
         (apt-get install -y chromium chromium-driver) to run the console's browser tests",
        missing.join(" and ")
    );
    assert!(std::env::var_os("CI").is_none(), "{note}");
    eprintln!("\n!!!!!!!! NOTE: {note}; SKIPPED !!!!!!!!\n");
    false
}

/// chromedriver on a free loopback port, in its own process group so that dropping it ends
/// the Chromium it started too, even when a test fails halfway.
struct Driver {
    child: Child,
    url: String,
    _profile: TempDir,
    profile: PathBuf,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let profile = tempfile::Builder::new()
            .prefix("console-chromium-")
            .tempdir()
            .expect("a profile directory");
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .expect("the chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // The page shows instants in UTC and the picker is read as UTC; the browser's own
            // zone must not matter, and UTC makes the screenshot match the API's instants.
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: profile.path().join("profile"),
            _profile: profile,
        }
    }

    async fn browser(&self) -> Client {
        let options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,3000",
                format!("--user-data-dir={}", self.profile.display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("a Chromium session through {}: {err}", self.url))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is chromedriver's own (process_group(0) above): it and its Chromium.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// Polls the page with `script` (a function body returning a value) until `done` holds.
async fn wait_until(
    browser: &Client,
    what: &str,
    script: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let value = browser
            .execute(script, vec![])
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        if done(&value) {
            return value;
        }
        if Instant::now() > deadline {
            let message = browser
                .execute(
                    "return document.getElementById('message').textContent",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!("timed out waiting for {what}; last value {value}; page message {message}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
        .text()
        .await
        .expect("element text")
}

/// A number as the page prints it ("6,067" → 6067).
fn number(shown: &str) -> u64 {
    shown
        .replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {shown:?}"))
}

/// Types `token` into the labelled password field and `account` into the account field, and
/// waits for the page to show the account or a message.
async fn sign_in_and_show(browser: &Client, token: &str, account: &str) {
    let field = browser
        .find(Locator::Css("label[for=token] ~ input#token"))
        .await
        .expect("a labelled token field");
    assert_eq!(
        field.attr("type").await.expect("type").as_deref(),
        Some("password")
    );
    field.send_keys(token).await.expect("type the token");
    browser
        .find(Locator::Css("#token-form button[type=submit]"))
        .await
        .expect("the token button")
        .click()
        .await
        .expect("use the token");
    let id = browser
        .find(Locator::Css("#account-id"))
        .await
        .expect("the account field");
    id.clear().await.expect("clear the account field");
    id.send_keys(account).await.expect("type the account");
    browser
        .find(Locator::Css("#show"))
        .await
        .expect("the show button")
        .click()
        .await
        .expect("show");
}

/// Waits until the page shows `account` (as of `at_shown`, when given) and returns the status.
async fn wait_shown(browser: &Client, account: &str, at_shown: Option<&str>) -> String {
    let script = "return document.getElementById('status').textContent";
    let want = format!("Showing {account} as of ");
    let value = wait_until(
        browser,
        &format!("the page to show {account}"),
        script,
        |v| {
            v.as_str().is_some_and(|status| {
                status.starts_with(&want) && at_shown.is_none_or(|at| status.contains(at))
            })
        },
    )
    .await;
    value.as_str().unwrap_or_default().to_string()
}

async fn explain(api: &Api, account: &str, at: Option<&str>) -> Value {
    let query = at.map_or_else(String::new, |at| format!("?at={at}"));
    api.get(
        Role::Support,
        &format!("/v1/accounts/{account}/explain{query}"),
    )
    .await
    .expect(200)
}

/// The bucket rows the page shows: (bucket, id, remaining).
async fn shown_buckets(browser: &Client) -> Vec<(String, String, u64)> {
    let rows = browser
        .execute(
            "return [...document.querySelectorAll('#buckets tbody tr')].map(r => \
             [r.dataset.bucket, r.dataset.id, Number(r.querySelector('[data-remaining]').dataset.remaining)])",
            vec![],
        )
        .await
        .expect("the bucket rows");
    serde_json::from_value(rows).expect("rows of [bucket, id, remaining]")
}

/// The bucket rows explain's balance implies, in the page's order.
fn expected_buckets(balance: &Value) -> Vec<(String, String, u64)> {
    let mut rows = Vec::new();
    let number = |value: &Value| value.as_u64().expect("credits");
    if balance["allowance"].is_object() {
        let a = &balance["allowance"];
        rows.push((
            "allowance".into(),
            a["id"].as_str().unwrap_or_default().into(),
            number(&a["remaining"]),
        ));
    }
    let lots = [
        ("top_ups", "top-up", "lot_id", "remaining"),
        ("grants", "grant", "grant_id", "remaining"),
        ("holds", "hold", "hold_id", "amount"),
    ];
    for (list, bucket, id, amount) in lots {
        for lot in balance[list].as_array().expect("a list of lots") {
            rows.push((
                bucket.into(),
                lot[id].as_str().unwrap_or_default().into(),
                number(&lot[amount]),
            ));
        }
    }
    rows
}

/// The badges the page shows: model → (access, text).
async fn shown_badges(browser: &Client) -> Vec<(String, String, String)> {
    let badges = browser
        .execute(
            "return [...document.querySelectorAll('#models li')].map(b => \
             [b.dataset.model, b.dataset.access, b.querySelector('.badge-text').textContent])",
            vec![],
        )
        .await
        .expect("the badges");
    serde_json::from_value(badges).expect("badges of [model, access, text]")
}

/// Each badge says in words what explain says of its model.
fn check_badges(shown: &[(String, String, String)], explanation: &Value) {
    let models = explanation["models"].as_array().expect("models");
    assert_eq!(shown.len(), models.len(), "one badge per model: {shown:?}");
    for ((model, access, text), expected) in shown.iter().zip(models) {
        assert_eq!(model, expected["model"].as_str().expect("a model id"));
        let want = match expected["access"].as_str().expect("access") {
            "paid" => "open",
            "trial" => "trial",
            _ => "locked",
        };
        assert_eq!(access, want, "{model}: {expected}");
        assert!(text.starts_with(want), "{model}: the badge says {text:?}");
        if want == "locked" && expected["reason_code"] == "MODEL_TIER_REQUIRED" {
            let tier = expected["min_tier"].as_str().expect("a tier");
            assert!(text.contains(&format!("needs {tier}")), "{model}: {text:?}");
        }
    }
}

/// Counts the timeline's rows page by page with the Next button, back from the first page.
async fn timeline_rows(browser: &Client) -> (usize, usize) {
    let mut total = 0;
    let mut pages = 0;
    loop {
        let rows = browser
            .find_all(Locator::Css("#timeline tbody tr"))
            .await
            .expect("timeline rows");
        total += rows.len();
        pages += 1;
        let next = browser
            .find(Locator::Css("#next"))
            .await
            .expect("the next button");
        if !next.is_enabled().await.expect("next enabled?") {
            break;
        }
        next.click().await.expect("next page");
    }
    // Back to the first page with the Previous button.
    loop {
        let prev = browser
            .find(Locator::Css("#prev"))
            .await
            .expect("the prev button");
        if !prev.is_enabled().await.expect("prev enabled?") {
            break;
        }
        prev.click().await.expect("previous page");
    }
    (total, pages)
}

/// An account with a real history: a trial run of flux-pro while free, paid charges, a
/// subscription, a top-up, a grant, a refund, an open hold and enough small charges to need a
/// second timeline page. Returns an instant (whole seconds, UTC) between the free part and
/// the paid part.
async fn demo_history(api: &Api, id: &str) -> String {
    open(api, id).await;
    let trial = charge(
        api,
        id,
        charge_body("c-trial", "flux-pro", Some(("images", 1))),
    )
    .await;
    assert_eq!(trial.expect(201)["paid_by"], "trial");
    charge(
        api,
        id,
        charge_body("c-schnell", "flux-schnell", Some(("images", 2))),
    )
    .await
    .expect(201);
    // A whole second strictly between the two parts, so the picker (to the second) can name it.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let between = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    subscribe(api, id, "pro").await;
    top_up(api, id, "tu-spring", 1_000).await;
    api.post(
        Role::Support,
        &format!("/v1/accounts/{id}/grants"),
        json!({"grant_id": "g-goodwill", "credits": 250, "reason": "outage goodwill"}),
    )
    .await
    .expect(201);
    for (charge_id, model, quantity) in [
        ("c-pro", "flux-pro", ("images", 3)),
        ("c-kling", "kling-2", ("seconds", 5)),
        ("c-audio", "stable-audio", ("seconds", 10)),
    ] {
        charge(api, id, charge_body(charge_id, model, Some(quantity)))
            .await
            .expect(201);
    }
    api.post(
        Role::Executor,
        &format!("/v1/accounts/{id}/charges/c-kling/refund"),
        json!({"reason": "the render failed"}),
    )
    .await
    .expect(200);
    api.post(
        Role::Executor,
        &format!("/v1/accounts/{id}/holds"),
        json!({"hold_id": "h-batch", "run_id": "run-batch", "node_id": "node-1",
               "model": "flux-schnell", "images": 4}),
    )
    .await
    .expect(201);
    for n in 0..60 {
        charge(
            api,
            id,
            charge_body(&format!("c-chat-{n}"), "assistant-chat", None),
        )
        .await
        .expect(201);
    }
    between
}

/// The page and its files are public, typed, and carry the strict policy and `nosniff`.
#[tokio::test]
async fn console_files_are_served_with_a_strict_content_security_policy() {
    let server = Server::start().await;
    let api = &server.api;
    for (path, media) in [
        ("/console", "text/html"),
        ("/console/app.js", "application/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let reply = api.send(None, "GET", path, Body::None).await;
        assert_eq!(reply.status, 200, "{path}");
        let content_type = reply.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with(media), "{path}: {content_type}");
        assert_eq!(
            reply.header("content-security-policy").as_deref(),
            Some(ledger_service::api::CONTENT_SECURITY_POLICY),
            "{path}"
        );
        assert_eq!(
            reply.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
    let page = api.send(None, "GET", "/console", Body::None).await.text;
    assert!(page.contains(r#"<script src="/console/app.js""#));
    assert!(page.contains(r#"href="/console/app.css""#));
}

/// What the page shows for an account is what the API answers: the total, every bucket row,
/// each model's badge, every timeline row across pages, usage by model and a CSV that
/// verifies; moving "as of" back shows explain's balance as of that instant.
#[tokio::test]
async fn console_shows_an_account_as_the_api_explains_it() {
    if !browser_available("console_shows_an_account_as_the_api_explains_it") {
        return;
    }
    let server = Server::start().await;
    let api = &server.api;
    let id = "demo-acme";
    let between = demo_history(api, id).await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser
        .goto(&api.url("/console"))
        .await
        .expect("load /console");
    sign_in_and_show(&browser, Role::Support.token(), id).await;
    wait_shown(&browser, id, None).await;

    let now = explain(api, id, None).await;
    let summary = api
        .get(Role::Support, &format!("/v1/accounts/{id}"))
        .await
        .expect(200);
    let total = number(&text(&browser, "#fact-total").await);
    assert_eq!(total, now["balance"]["total"].as_u64().expect("a total"));
    assert_eq!(
        Some(total),
        summary["balance"]["total"].as_u64(),
        "the summary agrees"
    );
    assert_eq!(text(&browser, "#fact-tier").await, "pro");
    assert_eq!(
        number(&text(&browser, "#fact-held").await),
        8,
        "the open hold of 4 images"
    );
    assert_eq!(
        shown_buckets(&browser).await,
        expected_buckets(&now["balance"])
    );
    check_badges(&shown_badges(&browser).await, &now);
    // The screenshot for the note: the account as first shown, before any paging or focus.
    let png = browser.screenshot().await.expect("a screenshot");
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console.png");
    std::fs::create_dir_all(shot.parent().expect("target/")).expect("target/");
    std::fs::write(&shot, png).expect("write target/console.png");
    let (rows, pages) = timeline_rows(&browser).await;
    assert_eq!(rows, now["timeline"].as_array().expect("timeline").len());
    assert!(
        pages >= 2,
        "{rows} rows fit one page: paging was not exercised"
    );

    // Keyboard: the rows take focus and the arrow keys move it.
    let first = browser
        .find(Locator::Css("#timeline tbody tr"))
        .await
        .expect("a first row");
    first.click().await.expect("focus the first row");
    first.send_keys("\u{E015}").await.expect("arrow down");
    let focused = browser
        .execute("return document.activeElement.dataset.version", vec![])
        .await
        .expect("the focused row");
    assert_eq!(focused, json!("2"), "arrow down moves to the next row");

    // Usage by model: charges minus refunds, the trial run at 0 credits.
    let usage = browser
        .execute(
            "return Object.fromEntries([...document.querySelectorAll('#usage tbody tr')].map(r => \
             [r.dataset.model, [...r.querySelectorAll('td')].map(c => c.textContent)]))",
            vec![],
        )
        .await
        .expect("usage rows");
    assert_eq!(
        usage["flux-pro"],
        json!(["2", "24"]),
        "a trial run and 3 paid images"
    );
    assert_eq!(usage["kling-2"], json!(["0", "0"]), "refunded");
    assert_eq!(usage["assistant-chat"], json!(["60", "60"]));

    // The CSV download: every event, every envelope field, and it verifies as an export.
    let csv = browser
        .execute("return window.ledgerConsole.csv()", vec![])
        .await
        .expect("the CSV");
    let csv = csv.as_str().expect("CSV text");
    let events = crate::support::all_events(api, id).await;
    assert_eq!(
        csv.lines().count(),
        events.len() + 1,
        "a header and one row per event"
    );
    let file = tempfile::NamedTempFile::new().expect("a CSV file");
    std::fs::write(file.path(), csv).expect("write the CSV");
    let verified = ledger_command()
        .args(["audit", "verify", "--file"])
        .arg(file.path())
        .output()
        .expect("run ledger audit verify");
    assert!(
        verified.status.success(),
        "the page's CSV does not verify: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // As of the instant between the free and the paid part: explain's balance then.
    let then = explain(api, id, Some(&between)).await;
    let picker = between.trim_end_matches('Z');
    browser
        .execute(
            "const input = document.getElementById('as-of'); input.value = arguments[0]; \
             input.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![json!(picker)],
        )
        .await
        .expect("move the as-of picker");
    let shown_at = format!("{} UTC", picker.replace('T', " "));
    wait_shown(&browser, id, Some(&shown_at)).await;
    let total_then = number(&text(&browser, "#fact-total").await);
    assert_eq!(
        total_then,
        then["balance"]["total"].as_u64().expect("a total")
    );
    assert_ne!(total_then, total, "the picker changed the total");
    assert_eq!(text(&browser, "#fact-tier").await, "free");
    assert_eq!(
        shown_buckets(&browser).await,
        expected_buckets(&then["balance"])
    );
    let badges = shown_badges(&browser).await;
    check_badges(&badges, &then);
    let flux_pro = badges
        .iter()
        .find(|(model, ..)| model == "flux-pro")
        .expect("flux-pro");
    assert_eq!(
        flux_pro.2, "trial 2/3 left",
        "one of three free runs used by then"
    );
    let (rows, _) = timeline_rows(&browser).await;
    assert_eq!(rows, then["timeline"].as_array().expect("timeline").len());

    browser.close().await.expect("end the session");
}

/// Errors show as a visible alert with the API's words, never as a blank page.
#[tokio::test]
async fn console_shows_messages_for_a_bad_token_and_an_unknown_account() {
    if !browser_available("console_shows_messages_for_a_bad_token_and_an_unknown_account") {
        return;
    }
    let server = Server::start().await;
    let api = &server.api;
    open(api, "known").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser
        .goto(&api.url("/console"))
        .await
        .expect("load /console");
    let alert = "const m = document.querySelector('[role=alert]'); \
                 return m && !m.hidden ? m.textContent : null";

    sign_in_and_show(&browser, "not-a-token-of-this-ledger", "known").await;
    let message = wait_until(&browser, "the 401 message", alert, Value::is_string).await;
    assert!(
        message.as_str().is_some_and(|m| m.contains("401")),
        "{message}"
    );
    // The refused token is forgotten: the token field is back.
    let asks = browser
        .execute(
            "return !document.getElementById('token-form').hidden && !sessionStorage.length",
            vec![],
        )
        .await
        .expect("the token form");
    assert_eq!(asks, json!(true), "the page asks for a token again");

    let unknown = api
        .get(Role::Support, "/v1/accounts/nobody-here")
        .await
        .json["error"]["message"]
        .as_str()
        .expect("a 404 message")
        .to_string();
    sign_in_and_show(&browser, Role::Finance.token(), "nobody-here").await;
    let message = wait_until(&browser, "the 404 message", alert, |m| {
        m.as_str().is_some_and(|m| m.contains("404"))
    })
    .await;
    assert!(
        message.as_str().is_some_and(|m| m.contains(&unknown)),
        "{message}"
    );
    let hidden = browser
        .execute("return document.getElementById('account').hidden", vec![])
        .await
        .expect("the account section");
    assert_eq!(hidden, json!(true), "no stale account under the message");

    browser.close().await.expect("end the session");
}
