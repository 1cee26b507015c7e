//! The insight reads of SPEC section 13 over real HTTP: model badges that agree with
//! admission, refresh dates on the summary and explain, the balance over time point for point
//! equal to explain, usage from the usage view, and bad ranges refused with the envelope.

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::support::*;

fn badge<'a>(answer: &'a Value, model: &str) -> &'a Value {
    answer["models"]
        .as_array()
        .and_then(|models| models.iter().find(|badge| badge["model"] == model))
        .unwrap_or_else(|| panic!("no badge for {model} in {answer}"))
}

async fn models(api: &Api, id: &str, min_position: u64) -> Value {
    let path = format!("/v1/accounts/{id}/models?min_position={min_position}");
    api.get(Role::Executor, &path).await.expect(200)
}

#[tokio::test]
async fn model_badges_agree_with_admission_and_follow_the_trial() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "pick").await;
    let free = models(api, "pick", position(&opened)).await;
    let access = |answer: &Value, model: &str| badge(answer, model)["access"].clone();
    assert_eq!(access(&free, "flux-schnell"), "open", "{free}");
    assert_eq!(access(&free, "flux-pro"), "trial");
    assert_eq!(access(&free, "kling-2"), "trial");
    assert_eq!(access(&free, "seedance-2.0-i2v"), "locked");
    let seedance = badge(&free, "seedance-2.0-i2v");
    assert_eq!(seedance["required_tier"], "business");
    assert_eq!(seedance["reason_code"], "MODEL_TIER_REQUIRED");
    assert_eq!(
        seedance["price"],
        json!({"unit": "per_second", "credits": 40})
    );
    let flux_pro = badge(&free, "flux-pro");
    assert_eq!(flux_pro["required_tier"], "pro");
    assert_eq!(
        flux_pro["trial"],
        json!({"kind": "runs", "limit": 3, "used": 0,
        "opened_at": null, "closes_at": null, "status": "unused"})
    );
    assert_eq!(badge(&free, "flux-schnell")["trial"], Value::Null);

    let mut last = opened;
    for id in ["t1", "t2", "t3"] {
        last = charge(
            api,
            "pick",
            charge_body(id, "flux-pro", Some(("images", 1))),
        )
        .await
        .expect(201);
    }
    let used_up = models(api, "pick", position(&last)).await;
    let flux_pro = badge(&used_up, "flux-pro");
    assert_eq!(flux_pro["access"], "locked", "{used_up}");
    assert_eq!(flux_pro["reason_code"], "TRIAL_EXHAUSTED");
    assert_eq!(flux_pro["trial"]["status"], "exhausted");
    // The badge and admission say the same.
    let refused = api
        .post(
            Role::Executor,
            &format!("/v1/accounts/pick/admission?min_position={}", position(&last)),
            json!({"nodes": [{"node_id": "n", "type": "image_generator", "model": "flux-pro", "images": 1}]}),
        )
        .await;
    refused.expect_error(403, "TRIAL_EXHAUSTED");

    let pro = subscribe(api, "pick", "pro").await;
    let upgraded = models(api, "pick", position(&pro)).await;
    assert_eq!(access(&upgraded, "flux-pro"), "open", "{upgraded}");
    assert_eq!(badge(&upgraded, "flux-pro")["required_tier"], Value::Null);
    assert_eq!(access(&upgraded, "seedance-2.0-t2v"), "locked");

    api.get(Role::Support, "/v1/accounts/nobody/models")
        .await
        .expect_error(404, "ACCOUNT_NOT_FOUND");
}

#[tokio::test]
async fn the_summary_and_explain_carry_the_refresh_dates() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "dates").await;
    assert_eq!(
        opened["last_refresh_at"],
        opened_period_start(&opened),
        "{opened}"
    );
    assert_eq!(opened["next_refresh_at"], opened["balance"]["period_end"]);
    let explained = api
        .get(Role::Support, "/v1/accounts/dates/explain")
        .await
        .expect(200);
    assert_eq!(explained["last_refresh_at"], opened["last_refresh_at"]);
    assert_eq!(explained["next_refresh_at"], opened["next_refresh_at"]);
    // Monthly paid plans renew through billing: nothing scheduled.
    let pro = subscribe(api, "dates", "pro").await;
    let read = summary(api, "dates", position(&pro)).await;
    assert_eq!(read["next_refresh_at"], Value::Null, "{read}");
    assert_eq!(
        instant(&read["last_refresh_at"]),
        instant(&pro["last_refresh_at"])
    );
}

/// The period start of a newly opened account: its allowance period ends a month later.
fn opened_period_start(summary: &Value) -> Value {
    let end = instant(&summary["balance"]["period_end"]);
    let start = chrono::DateTime::parse_from_rfc3339(summary["last_refresh_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    assert!(end - start >= TimeDelta::days(28) && end - start <= TimeDelta::days(31));
    summary["last_refresh_at"].clone()
}

#[tokio::test]
async fn every_history_point_equals_explain_at_its_instant() {
    let server = Server::start().await;
    let api = &server.api;
    let from = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap();
    open(api, "chart").await;
    charge(
        api,
        "chart",
        charge_body("c1", "flux-schnell", Some(("images", 10))),
    )
    .await
    .expect(201);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    top_up(api, "chart", "p1", 300).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let to = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap();
    let rfc = |at: chrono::DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let path = format!(
        "/v1/accounts/chart/history?from={}&to={}&step=1s",
        rfc(from - TimeDelta::seconds(1)),
        rfc(to)
    );
    let answer = api.get(Role::Finance, &path).await.expect(200);
    let points = answer["points"].as_array().expect("points");
    assert!(points.len() >= 4, "{answer}");
    assert_eq!(points[0]["total"], 0, "before the account opened");
    assert_eq!(points.last().unwrap()["total"], 780, "{answer}");
    for point in points {
        let at = point["at"].as_str().unwrap();
        let reply = api
            .get(
                Role::Support,
                &format!("/v1/accounts/chart/explain?at={at}"),
            )
            .await;
        if reply.status == 404 {
            // Before the account opened: explain knows no account, history draws zero.
            assert_eq!(point["total"], 0, "at {at}");
            continue;
        }
        let explained = reply.expect(200);
        let balance = &explained["balance"];
        assert_eq!(point["total"], balance["total"], "at {at}");
        assert_eq!(point["held"], balance["held"], "at {at}");
        assert_eq!(
            point["allowance"], balance["allowance"]["remaining"],
            "at {at}"
        );
        let top_ups: u64 = balance["top_ups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|lot| lot["remaining"].as_u64().unwrap())
            .sum();
        assert_eq!(point["top_ups"], top_ups, "at {at}");
    }
}

#[tokio::test]
async fn history_refuses_bad_ranges_with_the_error_envelope() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "bad").await;
    let past = "2024-01-01T00:00:00Z";
    let bad = [
        format!("from=2024-01-02T00:00:00Z&to={past}&step=1h"),
        format!("from={past}&to={}&step=1h", from_now(3_600)),
        format!("from={past}&to=2024-01-02T00:00:00Z&step=1m"),
        format!("from={past}&to=2024-01-02T00:00:00Z&step=0s"),
        format!("from={past}&to=2024-01-02T00:00:00Z&step=soon"),
        "from=yesterday&to=2024-01-02T00:00:00Z&step=1h".to_string(),
        "to=2024-01-02T00:00:00Z&step=1h".to_string(),
    ];
    for query in bad {
        api.get(Role::Support, &format!("/v1/accounts/bad/history?{query}"))
            .await
            .expect_error(400, "INVALID_REQUEST");
    }
    api.get(
        Role::Support,
        &format!("/v1/accounts/nobody/history?from={past}&to={past}&step=1h"),
    )
    .await
    .expect_error(404, "ACCOUNT_NOT_FOUND");
}

#[tokio::test]
async fn usage_nets_refunds_and_counts_trial_runs_from_the_view() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "use").await;
    charge(
        api,
        "use",
        charge_body("c1", "flux-schnell", Some(("images", 3))),
    )
    .await
    .expect(201);
    charge(
        api,
        "use",
        charge_body("c2", "flux-schnell", Some(("images", 1))),
    )
    .await
    .expect(201);
    charge(
        api,
        "use",
        charge_body("c3", "flux-pro", Some(("images", 2))),
    )
    .await
    .expect(201);
    let last = charge(api, "use", charge_body("c4", "assistant-chat", None))
        .await
        .expect(201);
    let refunded = api
        .post(
            Role::Executor,
            "/v1/accounts/use/charges/c1/refund",
            json!({"reason": "run failed"}),
        )
        .await
        .expect(200);
    let at = position(&refunded).max(position(&last));
    let by_model = api
        .get(
            Role::Finance,
            &format!("/v1/accounts/use/usage?by=model&min_position={at}"),
        )
        .await
        .expect(200);
    assert_eq!(
        by_model,
        json!({
            "rows": [
                {"key": "flux-schnell", "runs": 1, "credits": 2},
                {"key": "assistant-chat", "runs": 1, "credits": 1},
                {"key": "flux-pro", "runs": 1, "credits": 0},
            ],
            "total": {"runs": 3, "credits": 3},
        })
    );
    let today = Utc::now().date_naive();
    let by_day = api
        .get(Role::Support, "/v1/accounts/use/usage?by=day")
        .await
        .expect(200);
    assert_eq!(
        by_day["rows"],
        json!([{"key": today.to_string(), "runs": 3, "credits": 3}])
    );
    let by_node = api
        .get(Role::Support, "/v1/accounts/use/usage?by=node_type")
        .await
        .expect(200);
    assert_eq!(
        by_node["rows"][0],
        json!({"key": "image_generator", "runs": 2, "credits": 2})
    );
    let midnight = |days: i64| format!("{}T00:00:00Z", today + TimeDelta::days(days));
    let yesterday = api
        .get(
            Role::Support,
            &format!(
                "/v1/accounts/use/usage?from={}&to={}",
                midnight(-1),
                midnight(0)
            ),
        )
        .await
        .expect(200);
    assert_eq!(
        yesterday,
        json!({"rows": [], "total": {"runs": 0, "credits": 0}})
    );
    for query in [
        format!("from={}&to={}", midnight(0), midnight(0)),
        format!("from={}T06:00:00Z&to={}", today, midnight(1)),
        "by=week".to_string(),
        "from=today".to_string(),
    ] {
        api.get(Role::Support, &format!("/v1/accounts/use/usage?{query}"))
            .await
            .expect_error(400, "INVALID_REQUEST");
    }
    api.get(Role::Support, "/v1/accounts/nobody/usage")
        .await
        .expect_error(404, "ACCOUNT_NOT_FOUND");
    api.get(Role::Executor, "/v1/accounts/use/usage")
        .await
        .expect_error(403, "FORBIDDEN");
}
