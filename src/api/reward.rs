//! `POST /get_reward`: the remote reward model shape of OpenRLHF (`--remote_rm_url`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `/get_reward`. Other fields OpenRLHF sends (`labels`) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RewardRequest {
    /// Model id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Prompt + response texts.
    pub query: Vec<String>,
    /// The prompt of each query; its response is the rest of the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Vec<String>>,
}

/// Response of `/get_reward`: `{"rewards": [endo, ...], "scores": [...]}` in query order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RewardResponse {
    /// One reward per query (`endo`).
    pub rewards: Vec<f64>,
    /// The same values: OpenRLHF reads `scores` for dynamic filtering.
    pub scores: Vec<f64>,
}

impl RewardResponse {
    /// The response for `rewards`.
    pub fn new(rewards: Vec<f64>) -> Self {
        RewardResponse {
            scores: rewards.clone(),
            rewards,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::*;

    #[test]
    fn request_ignores_labels_and_round_trips() {
        let request: RewardRequest = serde_json::from_value(
            json!({"query": ["Q: 2+2?\nA: 4"], "prompts": ["Q: 2+2?\nA:"], "labels": [""]}),
        )
        .unwrap();
        assert_wire(
            &request,
            json!({"query": ["Q: 2+2?\nA: 4"], "prompts": ["Q: 2+2?\nA:"]}),
        );
        let bare = RewardRequest {
            model: Some("m".into()),
            query: vec!["ab".into()],
            prompts: None,
        };
        assert_wire(&bare, json!({"model": "m", "query": ["ab"]}));
    }

    #[test]
    fn response_has_rewards_and_scores() {
        assert_wire(
            &RewardResponse::new(vec![-1.25, 0.0, 3.0]),
            json!({"rewards": [-1.25, 0.0, 3.0], "scores": [-1.25, 0.0, 3.0]}),
        );
    }
}
