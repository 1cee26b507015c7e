//! The admission check over HTTP: per-node costs, who pays each node (credits, trial,
//! free_node, unlimited), the first blocking node in `details.node_id`, reads at
//! `min_position`, and that asking writes nothing.

use serde_json::{json, Value};

use crate::support::*;

async fn admit(api: &Api, account: &str, min_position: u64, body: Value) -> Reply {
    api.post(
        Role::Executor,
        &format!("/v1/accounts/{account}/admission?min_position={min_position}"),
        body,
    )
    .await
}

fn node_costs(answer: &Value) -> Vec<(String, u64, String)> {
    answer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| {
            (
                node["node_id"].as_str().unwrap().to_string(),
                node["cost"].as_u64().unwrap(),
                node["paid_by"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn costs(expected: &[(&str, u64, &str)]) -> Vec<(String, u64, String)> {
    expected
        .iter()
        .map(|(id, cost, paid_by)| (id.to_string(), *cost, paid_by.to_string()))
        .collect()
}

#[tokio::test]
async fn admission_prices_every_node_and_writes_nothing() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "a1").await;
    subscribe(api, "a1", "pro").await;
    let topped = top_up(api, "a1", "lot", 1_000).await;
    let workflow = json!({"nodes": [
        {"node_id": "prompt", "type": "request_input"},
        {"node_id": "image", "type": "image_generator", "model": "flux-pro", "images": 2},
        {"node_id": "video", "type": "video_generator", "model": "kling-2", "seconds": 3},
        {"node_id": "music", "type": "music_generator", "model": "stable-audio", "seconds": 10},
        {"node_id": "chat", "type": "assistant", "model": "assistant-chat"},
        {"node_id": "fetch", "type": "http_request"},
        {"node_id": "items", "type": "list"},
        {"node_id": "out", "type": "response_output"},
    ]});
    let answer = admit(api, "a1", position(&topped), workflow.clone())
        .await
        .expect(200);
    assert_eq!(answer["admitted"], true);
    assert_eq!(
        node_costs(&answer),
        costs(&[
            ("prompt", 0, "free_node"),
            ("image", 16, "credits"),
            ("video", 60, "credits"),
            ("music", 30, "credits"),
            ("chat", 1, "credits"),
            ("fetch", 0, "free_node"),
            ("items", 0, "free_node"),
            ("out", 0, "free_node"),
        ])
    );
    assert_eq!(answer["total_cost"], 107);
    assert_eq!(answer["balance"], 6_000 - 107);

    // Asking again gives the same answer: nothing was charged or written.
    let again = admit(api, "a1", position(&topped), workflow)
        .await
        .expect(200);
    assert_eq!(again["balance"], answer["balance"]);
    let events = all_events(api, "a1").await;
    assert!(of_type(&events, "credits_charged").is_empty());
    assert_eq!(
        summary(api, "a1", position(&topped)).await["balance"]["total"],
        6_000
    );
}

#[tokio::test]
async fn admission_pays_trial_nodes_by_trial_and_counts_trials_across_the_workflow() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "f1").await;
    let flux = |id: &str| json!({"node_id": id, "type": "image_generator", "model": "flux-pro", "images": 1});
    let cheap = json!({"node_id": "cheap", "type": "image_generator", "model": "flux-schnell", "images": 3});
    let answer = admit(
        api,
        "f1",
        position(&opened),
        json!({"nodes": [flux("p1"), flux("p2"), cheap, flux("p3")]}),
    )
    .await
    .expect(200);
    assert_eq!(
        node_costs(&answer),
        costs(&[
            ("p1", 0, "trial"),
            ("p2", 0, "trial"),
            ("cheap", 6, "credits"),
            ("p3", 0, "trial")
        ])
    );
    assert_eq!(
        (answer["total_cost"].as_u64(), answer["balance"].as_u64()),
        (Some(6), Some(494))
    );
    // Three free runs: the fourth run in one workflow is the blocking node.
    let details = admit(
        api,
        "f1",
        position(&opened),
        json!({"nodes": [flux("p1"), flux("p2"), flux("p3"), flux("p4")]}),
    )
    .await
    .expect_error(403, "TRIAL_EXHAUSTED");
    assert_eq!(details["node_id"], "p4");
    // Admission consumed no trial run.
    let summary = summary(api, "f1", position(&opened)).await;
    let trial = summary["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["model"] == "flux-pro")
        .unwrap()
        .clone();
    assert_eq!(
        (trial["used"].as_u64(), trial["status"].as_str()),
        (Some(0), Some("unused"))
    );
}

#[tokio::test]
async fn admission_on_unlimited_accounts_is_paid_by_unlimited() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "e1").await;
    let ent = subscribe(api, "e1", "enterprise").await;
    assert_eq!(ent["unlimited"], true);
    let answer = admit(
        api,
        "e1",
        position(&ent),
        json!({"nodes": [
            {"node_id": "in", "type": "request_input"},
            {"node_id": "clip", "type": "video_generator", "model": "seedance-2.0-i2v", "seconds": 100},
            {"node_id": "lora", "type": "custom_model", "model": "custom-lora"},
        ]}),
    )
    .await
    .expect(200);
    assert_eq!(
        node_costs(&answer),
        costs(&[
            ("in", 0, "free_node"),
            ("clip", 4_000, "unlimited"),
            ("lora", 25, "unlimited")
        ])
    );
    assert_eq!(answer["total_cost"], 4_025);
    assert!(answer["balance"].is_null());
}

#[tokio::test]
async fn admission_names_the_first_blocking_node() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "b1").await;
    let pro = subscribe(api, "b1", "pro").await;
    let cheap = json!({"node_id": "cheap", "type": "image_generator", "model": "flux-schnell", "images": 1});
    let long =
        json!({"node_id": "long", "type": "video_generator", "model": "kling-2", "seconds": 3600});
    let gated = json!({"node_id": "gated", "type": "video_generator", "model": "seedance-2.0-t2v", "seconds": 1});
    let details = admit(
        api,
        "b1",
        position(&pro),
        json!({"nodes": [cheap.clone(), long.clone(), gated.clone()]}),
    )
    .await
    .expect_error(402, "INSUFFICIENT_CREDITS");
    assert_eq!(details["node_id"], "long");
    assert_eq!(
        (details["required"].as_u64(), details["available"].as_u64()),
        (Some(72_002), Some(5_000))
    );
    let details = admit(
        api,
        "b1",
        position(&pro),
        json!({"nodes": [cheap, gated, long]}),
    )
    .await
    .expect_error(403, "MODEL_TIER_REQUIRED");
    assert_eq!(details["node_id"], "gated");
}

#[tokio::test]
async fn admission_sees_a_top_up_once_the_views_reach_its_position() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "m1").await;
    let hundred = |id: &str| json!({"node_id": id, "type": "image_generator", "model": "flux-schnell", "images": 100});
    let workflow = json!({"nodes": [hundred("a"), hundred("b"), hundred("c")]});
    let details = admit(api, "m1", position(&opened), workflow.clone())
        .await
        .expect_error(402, "INSUFFICIENT_CREDITS");
    assert_eq!(
        (
            details["node_id"].as_str(),
            details["required"].as_u64(),
            details["available"].as_u64()
        ),
        (Some("c"), Some(600), Some(500))
    );
    let topped = top_up(api, "m1", "lot", 200).await;
    let answer = admit(api, "m1", position(&topped), workflow)
        .await
        .expect(200);
    assert_eq!(
        (answer["total_cost"].as_u64(), answer["balance"].as_u64()),
        (Some(600), Some(100))
    );
    assert!(answer["position"].as_u64().unwrap() >= position(&topped));
}

#[tokio::test]
async fn admission_takes_one_to_a_thousand_nodes() {
    let server = Server::start().await;
    let api = &server.api;
    let opened = open(api, "n1").await;
    let nodes = |count: usize| {
        let nodes: Vec<Value> = (0..count)
            .map(|n| json!({"node_id": format!("n{n}"), "type": "list"}))
            .collect();
        json!({ "nodes": nodes })
    };
    let answer = admit(api, "n1", position(&opened), nodes(1_000))
        .await
        .expect(200);
    assert_eq!(answer["nodes"].as_array().unwrap().len(), 1_000);
    assert_eq!(answer["total_cost"], 0);
    let path = format!(
        "/v1/accounts/n1/admission?min_position={}",
        position(&opened)
    );
    api.post_raw(Role::Executor, &path, &nodes(1_001).to_string())
        .await
        .expect_error(400, "INVALID_REQUEST");
}
