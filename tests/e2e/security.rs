//! Security checks against the real binary (issue 15): no token or secret in any log line of a
//! full run at trace level, oversize paths and query strings refused before anything reads
//! them, slow-loris connections (a trickled header, a stalled body) cut off by the server
//! while others are served, and the token file kept private across restarts.

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const STRIPE_SECRET: &str = "whsec_security_e2e_0123456789";
const ALERTS_SECRET: &str = "alerts-security-e2e-secret-0123456789";
/// A token no server knows: a caller that guesses must not find its guess in the logs either.
const WRONG_TOKEN: &str = "guessed-token-security-e2e-0123456789";

/// How long a test waits for the server to hang up: far beyond the 1 s bounds it is given,
/// so a loaded machine cannot fail it, yet bounded so a server that never hangs up fails it.
const HANG_UP_WITHIN: Duration = Duration::from_secs(30);

fn stripe_signature(body: &str) -> String {
    let t = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).expect("any key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn no_token_or_secret_appears_in_any_log_line() {
    let server = Server::start_with(Options {
        stripe_secrets: Some(STRIPE_SECRET.into()),
        env: vec![
            // Everything any crate logs, the HTTP stacks' connection traces included.
            ("LEDGER_LOG".into(), "trace".into()),
            ("LEDGER_WEBHOOK_SECRET".into(), ALERTS_SECRET.into()),
        ],
        ..Options::default()
    })
    .await;
    let api = &server.api;
    let account = "sec-logs";
    open(api, account).await;
    subscribe(api, account, "pro").await;
    top_up(api, account, "sec-top-up", 100).await;
    let charged = charge(
        api,
        account,
        charge_body("sec-c1", "flux-schnell", Some(("images", 1))),
    )
    .await
    .expect(201);
    let at = position(&charged);
    summary(api, account, at).await;
    api.get(Role::Finance, &format!("/v1/accounts/{account}/events"))
        .await
        .expect(200);
    api.get(Role::Support, &format!("/v1/accounts/{account}/explain"))
        .await
        .expect(200);
    api.get(Role::Finance, "/v1/audit/events").await.expect(200);
    // A receiver on loopback: the deliverer signs with the alerts secret and posts to it.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    api.send(
        Some(Role::Billing),
        "PUT",
        &format!("/v1/accounts/{account}/alerts"),
        Body::Json(json!({"low_balance": [1_000_000], "url": hook})),
    )
    .await
    .expect(200);
    for token in [WRONG_TOKEN, "", Role::Admin.token()] {
        let scheme = if token == Role::Admin.token() {
            "Basic"
        } else {
            "Bearer"
        };
        let reply = api
            .send_with_headers(
                None,
                "GET",
                &format!("/v1/accounts/{account}"),
                Body::None,
                &[("authorization", &format!("{scheme} {token}"))],
            )
            .await;
        reply.expect_error(401, "UNAUTHENTICATED");
    }
    let stripe_body =
        json!({"id": "evt_sec_1", "type": "customer.created", "data": {"object": {}}}).to_string();
    let headers = [("stripe-signature", stripe_signature(&stripe_body))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    api.send_with_headers(
        None,
        "POST",
        "/v1/billing/stripe",
        Body::Raw(stripe_body.clone()),
        &headers,
    )
    .await
    .expect(200);
    api.send_with_headers(
        None,
        "POST",
        "/v1/billing/stripe",
        Body::Raw(stripe_body),
        &[("stripe-signature", "t=1,v1=00")],
    )
    .await
    .expect_error(400, "INVALID_REQUEST");
    let delivery = tokio::time::timeout(HANG_UP_WITHIN, async {
        let (mut stream, _) = receiver.accept().await.expect("the deliverer connects");
        let mut request = vec![0u8; 64 * 1024];
        let read = stream.read(&mut request).await.expect("the delivery");
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .expect("answer the delivery");
        String::from_utf8_lossy(&request[..read]).to_string()
    })
    .await
    .expect("an alert delivery arrives");
    assert!(
        delivery.to_ascii_lowercase().contains("ledger-signature"),
        "{delivery}"
    );
    eventually(HANG_UP_WITHIN, "the delivery to be logged", || async {
        server.stderr().contains("alert delivered").then_some(())
    })
    .await;
    let stopped = server.stop().await;
    let stderr = std::fs::read_to_string(stopped.dir.path().join("stderr.log")).unwrap();
    let logs = format!("{}\n{stderr}", stopped.stdout.join("\n"));
    let verbose = logs
        .lines()
        .filter(|line| line.contains(" DEBUG ") || line.contains(" TRACE "))
        .count();
    assert!(
        verbose >= 5,
        "the run logged below info level, so the check saw the most an operator could:\n{logs}"
    );
    assert!(
        logs.contains("stripe delivery refused"),
        "the refused delivery was logged:\n{logs}"
    );
    let mut secrets: Vec<&str> = Role::ALL.iter().map(|role| role.token()).collect();
    secrets.extend([STRIPE_SECRET, ALERTS_SECRET, WRONG_TOKEN]);
    for secret in secrets {
        for (number, line) in logs.lines().enumerate() {
            assert!(
                !line.contains(secret),
                "log line {number} carries the secret {secret:?}: {line}"
            );
        }
    }
}

/// The account's event count, read from the store through the events endpoint.
async fn event_count(api: &Api, account: &str) -> usize {
    all_events(api, account).await.len()
}

#[tokio::test]
async fn an_oversize_path_or_query_string_is_refused_with_400_and_writes_nothing() {
    let server = Server::start().await;
    let api = &server.api;
    let account = "sec-uri";
    open(api, account).await;
    let before = event_count(api, account).await;
    let padding = "a".repeat(9 * 1024);
    let reply = api
        .get(
            Role::Finance,
            &format!("/v1/accounts/{account}/events?after=0&pad={padding}"),
        )
        .await;
    reply.expect_error(400, "INVALID_REQUEST");
    assert!(reply.text.contains("8192"), "{}", reply.text);
    let reply = api
        .post(
            Role::Executor,
            &format!("/v1/accounts/{account}/charges?pad={padding}"),
            charge_body("sec-uri-c1", "flux-schnell", Some(("images", 1))),
        )
        .await;
    reply.expect_error(400, "INVALID_REQUEST");
    // An account id the length of the limit is refused the same way, before routing.
    api.get(Role::Support, &format!("/v1/accounts/{padding}"))
        .await
        .expect_error(400, "INVALID_REQUEST");
    // A header block past hyper's own buffer is refused by hyper (431) and the server lives.
    let huge = "b".repeat(1024 * 1024);
    let response = reqwest::Client::new()
        .get(api.url("/healthz"))
        .header("x-padding", huge)
        .send()
        .await;
    if let Ok(response) = response {
        assert!(
            response.status().is_client_error(),
            "a 1 MiB header is refused: {}",
            response.status()
        );
    }
    assert_eq!(
        event_count(api, account).await,
        before,
        "nothing was written"
    );
    api.get(Role::Support, &format!("/v1/accounts/{account}"))
        .await
        .expect(200);
}

/// A server whose read bounds are 1 s, so the tests wait seconds, not the default's tens.
async fn impatient_server() -> Server {
    Server::start_with(Options {
        env: vec![
            ("LEDGER_HEADER_READ_TIMEOUT_S".into(), "1".into()),
            ("LEDGER_BODY_READ_TIMEOUT_S".into(), "1".into()),
        ],
        ..Options::default()
    })
    .await
}

fn address(api: &Api) -> String {
    api.url("").trim_start_matches("http://").to_string()
}

/// Sends `first`, then one byte of `trickle` every 200 ms, until the server hangs up (true)
/// or `HANG_UP_WITHIN` passes (false). Whatever the server answered before hanging up is
/// returned too.
async fn trickle_until_hung_up(addr: &str, first: &[u8], trickle: &[u8]) -> (bool, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(first).await.expect("the first bytes");
    let deadline = Instant::now() + HANG_UP_WITHIN;
    let mut answer = Vec::new();
    let mut bytes = trickle.iter().cycle();
    while Instant::now() < deadline {
        let mut buffer = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&answer).into()),
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => {
                let byte = [*bytes.next().expect("a cycled byte")];
                if stream.write_all(&byte).await.is_err() {
                    return (true, String::from_utf8_lossy(&answer).into());
                }
            }
        }
    }
    (false, String::from_utf8_lossy(&answer).into())
}

#[tokio::test]
async fn regression_a_trickling_header_held_its_connection_forever() {
    let server = impatient_server().await;
    let addr = address(&server.api);
    let slow = {
        let addr = addr.clone();
        tokio::spawn(async move {
            trickle_until_hung_up(
                &addr,
                b"GET /healthz HTTP/1.1\r\nHost: ledger\r\nX-Slow: ",
                b"abcdefgh",
            )
            .await
        })
    };
    // Served meanwhile, on other connections.
    for _ in 0..5 {
        let reply = reqwest::get(server.api.url("/healthz"))
            .await
            .expect("healthz");
        assert_eq!(reply.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (hung_up, answer) = slow.await.expect("the slow client");
    assert!(
        hung_up,
        "the server still held a trickling header after {HANG_UP_WITHIN:?}"
    );
    assert!(
        !answer.contains("200 OK"),
        "a request whose header never ended is not answered: {answer}"
    );
    open(&server.api, "sec-after-loris").await;
}

#[tokio::test]
async fn regression_a_body_stalled_half_way_held_its_connection_forever() {
    let server = impatient_server().await;
    let api = &server.api;
    let account = "sec-stall";
    open(api, account).await;
    let before = event_count(api, account).await;
    let body = charge_body("sec-stall-c1", "flux-schnell", Some(("images", 1))).to_string();
    let head = format!(
        "POST /v1/accounts/{account}/charges HTTP/1.1\r\nHost: ledger\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        Role::Executor.token(),
        body.len(),
        &body[..body.len() / 2]
    );
    let mut stream = TcpStream::connect(address(api)).await.expect("connect");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("half a body");
    // Then nothing: the server must answer or hang up on its own.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(HANG_UP_WITHIN, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server still waited for the body after {HANG_UP_WITHIN:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a stalled body gets a client error or a hang-up: {answer}"
    );
    assert!(!answer.contains("201"), "{answer}");
    assert_eq!(
        event_count(api, account).await,
        before,
        "nothing was written"
    );
    charge(
        api,
        account,
        charge_body("sec-stall-c2", "flux-schnell", Some(("images", 1))),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn read_bounds_of_zero_or_not_a_number_are_refused_at_start() {
    for value in ["0", "soon"] {
        let dir = tempfile::tempdir().unwrap();
        let output = ledger_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .env("LEDGER_TOKENS", tokens_env())
            .env("LEDGER_HEADER_READ_TIMEOUT_S", value)
            .output()
            .expect("run ledger serve");
        assert!(!output.status.success(), "{value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("LEDGER_HEADER_READ_TIMEOUT_S"), "{stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "a refused start touches no data: {stderr}"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_token_file_keeps_mode_0600_across_restarts_and_a_readable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let without_tokens = || Options {
        tokens: false,
        ..Options::default()
    };
    let server = Server::start_with(without_tokens()).await;
    let path = server.data().join("tokens.json");
    let written = std::fs::read(&path).unwrap();
    let mut dir = server.stop().await.dir;
    for _ in 0..2 {
        let server = Server::start_in(dir, without_tokens()).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "after a restart");
        assert_eq!(std::fs::read(&path).unwrap(), written, "the same tokens");
        dir = server.stop().await.dir;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = ledger_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .expect("run ledger serve");
    assert!(!output.status.success(), "a readable token file is refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("0644") && stderr.contains("tokens.json"),
        "{stderr}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "refusing changes nothing");
    assert_eq!(std::fs::read(&path).unwrap(), written);
}
