//! `GET /health` and `GET /v1/models`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a served model is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Loading the model and creating its context.
    Loading,
    /// Serving.
    Ready,
    /// It could not be loaded.
    Failed,
    /// It cannot serve now and comes back by itself: an RPC worker that holds some of its layers is
    /// lost or was never reached (`error` says which and why); the model is loaded again, with
    /// backoff, once every worker accepts connections. Its requests answer 503 `rpc_worker_lost`.
    Degraded,
}

/// The daemon as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Every model is ready and the config on disk is the one serving.
    Ok,
    /// A model is still loading (the route answers 503 with `Retry-After`).
    Loading,
    /// A model failed or is degraded, none is served, or the config on disk could not be applied.
    Degraded,
}

/// Response of `GET /health`: `{"status", "models": [{"id", "state", "error"?, "waiting_on"?}],
/// "config_error"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// The daemon as a whole.
    pub status: HealthStatus,
    /// Each served model.
    pub models: Vec<ModelHealth>,
    /// Why the config file on disk is not the one serving, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
}

impl HealthResponse {
    /// The health of `models`: `loading` while any loads, else `degraded` when one failed,
    /// none is served or the config could not be applied, else `ok`.
    pub fn new(models: Vec<ModelHealth>, config_error: Option<String>) -> Self {
        let status = if models.iter().any(|m| m.state == ModelState::Loading) {
            HealthStatus::Loading
        } else if models.is_empty()
            || config_error.is_some()
            || models
                .iter()
                .any(|m| matches!(m.state, ModelState::Failed | ModelState::Degraded))
        {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        };
        HealthResponse {
            status,
            models,
            config_error,
        }
    }
}

/// One model in `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelHealth {
    /// The model id.
    pub id: String,
    /// Loading, ready or failed.
    pub state: ModelState,
    /// Why it failed, or why it is degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What its load waits for, while it waits: an RPC worker that accepted the connection but
    /// serves another client (ggml's RPC server takes one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on: Option<String>,
}

/// Response of `GET /v1/models`: OpenAI's list shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The served models, by id.
    pub data: Vec<ModelCard>,
}

impl ModelList {
    /// The list of `data`.
    pub fn new(data: Vec<ModelCard>) -> Self {
        ModelList {
            object: "list".to_owned(),
            data,
        }
    }
}

/// One served model: OpenAI's fields, then endorm's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    /// The id requests name it by.
    pub id: String,
    /// `model`.
    pub object: String,
    /// `endorm`.
    pub owned_by: String,
    /// Always 0.
    pub created: u64,
    /// Loading, ready or failed.
    pub state: ModelState,
    /// Whether requests without `model` go to it.
    pub default: bool,
    /// What it is; `null` until it is loaded.
    pub meta: Option<ModelCardMeta>,
}

impl ModelCard {
    /// The card of model `id`.
    pub fn new(id: String, state: ModelState, default: bool, meta: Option<ModelCardMeta>) -> Self {
        ModelCard {
            id,
            object: "model".to_owned(),
            owned_by: "endorm".to_owned(),
            created: 0,
            state,
            default,
            meta,
        }
    }
}

/// What `/v1/models` tells about a loaded model. Only the file's name is shown, never its
/// directory: every client can read this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelCardMeta {
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Number of parameters.
    pub n_params: u64,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// Whether a chat template is available (from the GGUF or an override).
    pub chat_template: bool,
    /// The GGUF file's name, without its directory.
    pub file: String,
    /// The context window as served.
    pub n_ctx: usize,
    /// The CPU kernels that compute it: the variant a `cpu-dispatch` build chose for this CPU
    /// (`haswell`, `zen4`, ...) or the CPU a static build was compiled for (`x86-64-v3`). Values
    /// depend on the kernels, so two daemons with different ones may differ in the last digits.
    pub cpu: String,
    /// Where its offloaded layers are: the GPU devices as ggml names them (`Vulkan0: <its
    /// name>`, comma-separated), or `CPU` when every layer is on the CPU (no GPU layers asked
    /// for, a build without a GPU backend, or no GPU found).
    pub device: String,
    /// Layers on `device` when that is a GPU (else 0), of `n_layers`.
    pub gpu_layers: u32,
    /// The layers llama.cpp places: the model's blocks and its output layer.
    pub n_layers: u32,
    /// Where the KV cache is: with the blocks it belongs to (`CPU`, the GPU devices, or both with
    /// each one's number of layers).
    pub kv_cache: String,
    /// The RPC workers that hold some of its layers, in llama.cpp's order (absent for a model on
    /// this machine alone); the layers not counted there, the token embeddings among them, are
    /// computed here with the `cpu` kernels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rpc: Vec<RpcWorkerMeta>,
    /// `b` of `endo_lc = endo − b · H`: the model's mean reward per token on a fixed neutral
    /// text, measured when it loaded (absent when it could not be: `endo_lc` is refused then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endo_lc_baseline: Option<f64>,
}

/// What one RPC worker holds of a model (`/v1/models`, `meta.rpc`), from llama.cpp's load log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RpcWorkerMeta {
    /// The worker, `HOST:PORT`.
    pub worker: String,
    /// Its layers as llama.cpp counts them ("offloaded 31/31 layers"): repeating (transformer)
    /// layers, and the output layer on the worker that holds it.
    pub layers: u32,
    /// Bytes of weights in its buffers (the output matrix too, when it holds it).
    pub weights_bytes: u64,
}

/// `GET /info`, text-embeddings-inference's description of the served reranker (the default
/// model): what TEI clients read to size their batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeiInfo {
    /// The default model's id.
    pub model_id: String,
    /// `"gguf"`: the weights' format (their quantisation is in the model's file name).
    pub model_dtype: String,
    /// What TEI serves this model as: a reranker with one label.
    pub model_type: TeiModelType,
    /// Requests that may wait for the model (`queue_depth`).
    pub max_concurrent_requests: usize,
    /// Tokens of one input, query and text (the context window).
    pub max_input_length: usize,
    /// Tokens of one request (`max_tokens`).
    pub max_batch_tokens: usize,
    /// Texts in one request (`max_candidates`).
    pub max_client_batch_size: usize,
    /// Threads that tokenize.
    pub tokenization_workers: usize,
    /// endorm's version.
    pub version: String,
}

/// `{"reranker": {"id2label": {"0": "reward"}, "label2id": {"reward": 0}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TeiModelType {
    /// The reranker's labels.
    pub reranker: TeiLabels,
}

/// A classifier's labels, both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TeiLabels {
    /// Label by class id.
    pub id2label: std::collections::BTreeMap<String, String>,
    /// Class id by label.
    pub label2id: std::collections::BTreeMap<String, usize>,
}

impl TeiModelType {
    /// A reranker whose one label is the reward.
    pub fn reward() -> Self {
        TeiModelType {
            reranker: TeiLabels {
                id2label: [("0".to_owned(), "reward".to_owned())].into(),
                label2id: [("reward".to_owned(), 0)].into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::*;

    fn model(id: &str, state: ModelState, error: Option<&str>) -> ModelHealth {
        ModelHealth {
            id: id.into(),
            state,
            error: error.map(str::to_owned),
            waiting_on: None,
        }
    }

    #[test]
    fn health_is_todays_json() {
        let ok = HealthResponse::new(vec![model("a", ModelState::Ready, None)], None);
        assert_wire(
            &ok,
            json!({"status": "ok", "models": [{"id": "a", "state": "ready"}]}),
        );
        let failed = HealthResponse::new(
            vec![
                model("a", ModelState::Ready, None),
                model("b", ModelState::Failed, Some("no such file")),
            ],
            Some("bad toml".into()),
        );
        assert_wire(
            &failed,
            json!({"status": "degraded", "models": [{"id": "a", "state": "ready"},
                   {"id": "b", "state": "failed", "error": "no such file"}],
                   "config_error": "bad toml"}),
        );
    }

    #[test]
    fn health_status_follows_the_models() {
        let status = |models, config_error: Option<&str>| {
            HealthResponse::new(models, config_error.map(str::to_owned)).status
        };
        assert_eq!(status(vec![], None), HealthStatus::Degraded);
        assert_eq!(
            status(vec![model("a", ModelState::Ready, None)], Some("x")),
            HealthStatus::Degraded
        );
        assert_eq!(
            status(
                vec![
                    model("a", ModelState::Failed, Some("x")),
                    model("b", ModelState::Loading, None)
                ],
                Some("x")
            ),
            HealthStatus::Loading
        );
    }

    #[test]
    fn model_list_is_todays_json_with_the_file_name_only() {
        let meta = ModelCardMeta {
            n_ctx_train: 8192,
            n_vocab: 49152,
            n_params: 134_515_008,
            size_bytes: 98_000_000,
            chat_template: true,
            file: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            n_ctx: 2048,
            cpu: "x86-64-v3".into(),
            device: "Vulkan0: llvmpipe".into(),
            gpu_layers: 31,
            n_layers: 31,
            kv_cache: "Vulkan0: llvmpipe".into(),
            rpc: Vec::new(),
            endo_lc_baseline: Some(-1.5),
        };
        let list = ModelList::new(vec![
            ModelCard::new("a".into(), ModelState::Ready, true, Some(meta)),
            ModelCard::new("b".into(), ModelState::Loading, false, None),
        ]);
        assert_wire(
            &list,
            json!({"object": "list", "data": [
                {"id": "a", "object": "model", "owned_by": "endorm", "created": 0, "state": "ready",
                 "default": true, "meta": {"n_ctx_train": 8192, "n_vocab": 49152,
                 "n_params": 134_515_008, "size_bytes": 98_000_000, "chat_template": true,
                 "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "n_ctx": 2048, "cpu": "x86-64-v3",
                 "device": "Vulkan0: llvmpipe", "gpu_layers": 31, "n_layers": 31,
                 "kv_cache": "Vulkan0: llvmpipe", "endo_lc_baseline": -1.5}},
                {"id": "b", "object": "model", "owned_by": "endorm", "created": 0,
                 "state": "loading", "default": false, "meta": null}]}),
        );
    }
}
