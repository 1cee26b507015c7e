//! The server's life: it says `listening on ADDR` only once it answers, stops promptly with
//! exit 0 on SIGTERM (idle keep-alive connections included) keeping what it acknowledged,
//! and without `LEDGER_TOKENS` generates a private `DATA/tokens.json` it reuses on restart.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn sigterm_stops_the_server_promptly_with_exit_0_and_keeps_acknowledged_commands() {
    let server = Server::start().await;
    let api = server.api.clone();
    // "listening on" is printed once /healthz answers: the first request needs no retry.
    api.send(None, "GET", "/healthz", Body::None)
        .await
        .expect(200);
    open(&api, "s1").await;
    let charged = charge(
        &api,
        "s1",
        charge_body("c1", "flux-schnell", Some(("images", 7))),
    )
    .await
    .expect(201);
    // The client keeps its connection alive; shutdown must not wait for it.
    let stopped = server.stop().await;
    assert!(stopped.status.success(), "exit status {:?}", stopped.status);
    assert!(
        stopped.elapsed < Duration::from_secs(5),
        "took {:?} to stop",
        stopped.elapsed
    );
    assert!(
        stopped
            .stdout
            .iter()
            .any(|line| line.starts_with("listening on 127.0.0.1:")),
        "{:?}",
        stopped.stdout
    );

    let again = Server::start_in(stopped.dir, Options::default()).await;
    let read = summary(&again.api, "s1", position(&charged)).await;
    assert_eq!(read["balance"]["total"], charged["balance"]);
    let events = all_events(&again.api, "s1").await;
    assert_eq!(of_type(&events, "credits_charged").len(), 1);
}

#[tokio::test]
async fn without_ledger_tokens_serve_generates_a_private_token_file_and_reuses_it() {
    let server = Server::start_with(Options {
        tokens: false,
        ..Options::default()
    })
    .await;
    let path = server.data().join("tokens.json");
    assert!(
        server
            .stdout()
            .iter()
            .any(|line| line.contains("generated") && line.contains(path.to_str().unwrap())),
        "serve prints the path of the generated tokens: {:?}",
        server.stdout()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "tokens.json is readable by its owner only"
        );
    }
    let tokens: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut roles: Vec<&str> = tokens.keys().map(String::as_str).collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        ["admin", "billing", "executor", "finance", "support"]
    );
    assert!(tokens.values().all(|token| token.len() >= 16));

    let api = &server.api;
    let post = |role: &'static str| {
        let token = tokens[role].clone();
        async move {
            api.send_with_token(
                Some(&token),
                "POST",
                "/v1/accounts",
                Body::Json(json!({"account_id": format!("by-{role}")})),
            )
            .await
        }
    };
    let opened = post("billing").await.expect(201);
    post("executor").await.expect_error(403, "FORBIDDEN");
    // The configured test tokens mean nothing to this server.
    api.get(Role::Support, "/v1/accounts/by-billing")
        .await
        .expect_error(401, "UNAUTHENTICATED");

    let stopped = server.stop().await;
    assert!(stopped.status.success());
    let again = Server::start_in(
        stopped.dir,
        Options {
            tokens: false,
            ..Options::default()
        },
    )
    .await;
    assert!(
        again
            .stdout()
            .iter()
            .any(|line| line.contains(path.to_str().unwrap()) && !line.contains("generated")),
        "a restart reuses the file: {:?}",
        again.stdout()
    );
    let reply = again
        .api
        .send_with_token(
            Some(&tokens["support"]),
            "GET",
            &format!("/v1/accounts/by-billing?min_position={}", position(&opened)),
            Body::None,
        )
        .await;
    assert_eq!(reply.expect(200)["account_id"], "by-billing");
}
