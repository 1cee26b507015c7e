//! Contract defects found by trying the ledger as a new user would, each pinned where a user
//! meets it: a backdated subscription starts in the window that contains its time, and the
//! balance explained as of an instant applies every deadline due by then.

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_backdated_annual_subscription_has_its_current_windows_allowance_at_once() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "back").await;
    // A paid year that began ten months ago.
    let started = Utc::now() - TimeDelta::days(300);
    let ends = started + TimeDelta::days(365);
    let rfc = |at: chrono::DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let answer = api
        .post(
            Role::Billing,
            "/v1/accounts/back/subscription",
            json!({
                "tier": "pro", "billing": "annual", "reference": "sub-back",
                "period_start": rfc(started), "period_end": rfc(ends),
            }),
        )
        .await
        .expect(200);
    // The answer, admission and a charge agree at once: the window's full allowance.
    assert_eq!(answer["balance"]["allowance"], 6_000, "{answer}");
    assert_eq!(answer["balance"]["total"], 6_000);
    let window_end = instant(&answer["balance"]["period_end"]);
    assert!(window_end > Utc::now() && window_end <= Utc::now() + TimeDelta::days(31));
    let admitted = api
        .post(
            Role::Executor,
            &format!(
                "/v1/accounts/back/admission?min_position={}",
                position(&answer)
            ),
            json!({"nodes": [{"node_id": "n1", "type": "assistant", "model": "assistant-chat"}]}),
        )
        .await
        .expect(200);
    assert_eq!(admitted["admitted"], true);
    assert_eq!(admitted["balance"], 5_999);
    let charged = charge(api, "back", charge_body("c1", "assistant-chat", None))
        .await
        .expect(201);
    assert_eq!(charged["drawn_from"][0]["bucket"], "allowance");
    assert_eq!(charged["balance"], 5_999);
    // The scheduler runs every second: it finds nothing due, so no phantom refresh.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let events = all_events(api, "back").await;
    assert!(
        of_type(&events, "allowance_renewed").is_empty(),
        "no refresh of an earlier window is written"
    );
    let read = summary(api, "back", position(&charged)).await;
    assert_eq!(read["balance"]["total"], 5_999);
}

#[tokio::test]
async fn explain_as_of_a_holds_expiry_returns_its_credits_whether_or_not_it_was_written() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "ttl").await;
    let placed = api
        .post(
            Role::Executor,
            "/v1/accounts/ttl/holds",
            json!({"hold_id": "h1", "run_id": "r", "node_id": "n", "model": "flux-schnell",
                   "images": 5, "ttl": "1s"}),
        )
        .await
        .expect(201);
    let expires_at = instant(&placed["expires_at"]);
    sleep_past(expires_at).await;
    let at = placed["expires_at"].as_str().unwrap().to_string();
    let path = format!("/v1/accounts/ttl/explain?at={at}");
    let first = api.get(Role::Support, &path).await.expect(200);
    assert_eq!(first["balance"]["held"], 0, "{first}");
    assert_eq!(first["balance"]["total"], 500);
    // Once the scheduler has written the expiry, the answer for the same instant is the same.
    eventually(
        std::time::Duration::from_secs(10),
        "the scheduler writes hold_expired",
        || async {
            let events = all_events(api, "ttl").await;
            (!of_type(&events, "hold_expired").is_empty()).then_some(())
        },
    )
    .await;
    let later = api.get(Role::Support, &path).await.expect(200);
    assert_eq!(later["balance"], first["balance"]);
}
