//! The acceptance test of no overdraft and no double charge under concurrency: 32 clients
//! charge one account holding exactly 1,000 credits, 1 credit per charge, every request sent
//! twice with the same `charge_id` at the same time. Exactly 1,000 distinct charges succeed,
//! the rest are 402, the balance ends at 0 and the stream holds exactly 1,000 charges.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::support::*;

const CLIENTS: usize = 32;
const CREDITS: u64 = 1_000;
/// More charges than credits, so that the last ones must be refused.
const CHARGES: usize = 1_100;

/// What the two copies of one charge got.
#[derive(Debug)]
struct Pair {
    statuses: [u16; 2],
    bodies: [Value; 2],
}

fn without_position(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("position");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_clients_retrying_every_charge_spend_exactly_the_balance_once() {
    let server = Server::start().await;
    let api = &server.api;
    open(api, "hot").await;
    // Enterprise with a custom allowance of exactly 1,000 credits (the free allowance is
    // forfeited by the change).
    let mut body = subscription("enterprise", Some("monthly"), "ent-hot");
    body["allowance"] = json!(CREDITS);
    let ready = api
        .post(Role::Billing, "/v1/accounts/hot/subscription", body)
        .await
        .expect(200);
    assert_eq!(ready["unlimited"], false);
    assert_eq!(ready["balance"]["total"], CREDITS);

    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let api = api.fresh();
        let next = next.clone();
        clients.push(tokio::spawn(async move {
            let mut pairs = BTreeMap::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= CHARGES {
                    return pairs;
                }
                let id = format!("charge-{n:04}");
                let body = json!({"charge_id": id, "run_id": "run-hot", "node_id": format!("node-{n}"), "model": "assistant-chat"});
                // The same request twice at once: a retry racing the original.
                let (a, b) = tokio::join!(charge(&api, "hot", body.clone()), charge(&api, "hot", body));
                pairs.insert(
                    id,
                    Pair {
                        statuses: [a.status, b.status],
                        bodies: [a.json, b.json],
                    },
                );
            }
        }));
    }
    let mut pairs = BTreeMap::new();
    for client in clients {
        pairs.extend(client.await.expect("a client task"));
    }
    assert_eq!(pairs.len(), CHARGES);

    let mut succeeded = HashSet::new();
    let mut refused = 0;
    let mut last_position = 0;
    for (id, pair) in &pairs {
        let mut statuses = pair.statuses;
        statuses.sort_unstable();
        match statuses {
            [200, 201] => {
                assert_eq!(
                    without_position(&pair.bodies[0]),
                    without_position(&pair.bodies[1]),
                    "{id}: the retry answers the first body"
                );
                assert_eq!(pair.bodies[0]["cost"], 1);
                for body in &pair.bodies {
                    last_position = last_position.max(position(body));
                }
                succeeded.insert(id.clone());
            }
            [402, 402] => {
                for body in &pair.bodies {
                    assert_eq!(body["error"]["code"], "INSUFFICIENT_CREDITS", "{id}");
                    assert_eq!(body["error"]["details"]["required"], 1);
                    assert_eq!(body["error"]["details"]["available"], 0);
                }
                refused += 1;
            }
            other => panic!("{id}: the two copies answered {other:?}: {:?}", pair.bodies),
        }
    }
    assert_eq!(
        succeeded.len(),
        CREDITS as usize,
        "exactly the balance is spent"
    );
    assert_eq!(refused, CHARGES - CREDITS as usize);

    let read = summary(api, "hot", last_position).await;
    assert_eq!(read["balance"]["total"], 0);
    assert_eq!(read["balance"]["allowance"], 0);
    let events = all_events(api, "hot").await;
    let charged = of_type(&events, "credits_charged");
    assert_eq!(
        charged.len(),
        CREDITS as usize,
        "exactly 1,000 credits_charged events"
    );
    let recorded: HashSet<String> = charged
        .iter()
        .map(|event| event["data"]["charge_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        recorded, succeeded,
        "the recorded charges are the acknowledged ones"
    );
    // Versions stay gapless under contention.
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["version"], index + 1);
    }
}
