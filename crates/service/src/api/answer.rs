//! Answer bodies written straight from the domain's data, for the answers a busy node sends
//! most: a charge's receipt. The other answers go through a `serde_json::Value`.

use ledger_domain::decide::ChargeReceipt;
use ledger_domain::events::{BucketKind, PaidBy, Part};
use ledger_domain::Credits;
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// A charge's answer: the receipt plus `position`. The keys are in the order a JSON map sorts
/// them, so the bytes are those the `Value` route wrote (a test holds the two equal); that
/// route built a map of owned strings per answer, 5% of a charge's server CPU (issue 18).
#[derive(serde::Serialize)]
pub(super) struct ChargeAnswer<'a> {
    balance: Option<Credits>,
    charge_id: &'a str,
    cost: Credits,
    drawn_from: Parts<'a>,
    paid_by: PaidBy,
    position: Option<u64>,
}

impl<'a> ChargeAnswer<'a> {
    pub(super) fn new(receipt: &'a ChargeReceipt, position: Option<u64>) -> Self {
        ChargeAnswer {
            balance: receipt.balance,
            charge_id: &receipt.charge_id,
            cost: receipt.cost,
            drawn_from: Parts(&receipt.drawn_from),
            paid_by: receipt.paid_by,
            position,
        }
    }
}

/// The parts a charge drew from, each with its keys sorted.
struct Parts<'a>(&'a [Part]);

#[derive(serde::Serialize)]
struct SortedPart<'a> {
    amount: Credits,
    bucket: BucketKind,
    id: &'a str,
}

impl Serialize for Parts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for part in self.0 {
            seq.serialize_element(&SortedPart {
                amount: part.amount,
                bucket: part.bucket,
                id: &part.id,
            })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bucket: BucketKind, id: &str, amount: u64) -> Part {
        Part {
            bucket,
            id: id.to_string(),
            amount: Credits::new(amount),
        }
    }

    /// What `receipt_response` wrote before: the receipt as a JSON map, plus `position`.
    fn through_value(receipt: &ChargeReceipt, position: Option<u64>) -> Vec<u8> {
        let value = super::super::with_position(
            serde_json::to_value(receipt).expect("a receipt serialises"),
            position,
        );
        serde_json::to_vec(&value).expect("a value serialises")
    }

    #[test]
    fn a_charge_answer_has_the_bytes_of_the_json_map_it_replaces() {
        let receipts = [
            ChargeReceipt {
                charge_id: "c-1".into(),
                cost: Credits::new(3),
                paid_by: PaidBy::Credits,
                drawn_from: vec![
                    part(BucketKind::Allowance, "2026-11-29T19:38:36Z", 1),
                    part(BucketKind::TopUp, "lot \"quoted\" é", 2),
                ],
                balance: Some(Credits::new(1_000_004_999)),
            },
            ChargeReceipt {
                charge_id: "trial\\run".into(),
                cost: Credits::ZERO,
                paid_by: PaidBy::Trial,
                drawn_from: Vec::new(),
                balance: None,
            },
        ];
        for receipt in &receipts {
            for position in [None, Some(0), Some(u64::MAX)] {
                let direct = serde_json::to_vec(&ChargeAnswer::new(receipt, position))
                    .expect("an answer serialises");
                assert_eq!(
                    String::from_utf8_lossy(&direct),
                    String::from_utf8_lossy(&through_value(receipt, position)),
                );
            }
        }
    }
}
