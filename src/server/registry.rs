//! The models being served, swapped whole when the config changes.
//!
//! A request takes an `Arc` of its model's entry; a reload that removes or replaces the model drops
//! only the registry's reference, so the request finishes on the model it started on, and the
//! worker unloads once its last request is done.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::StatusCode;

use super::error::ApiError;
use crate::config::{Config, ModelSpec, Overrides, ServerConfig};
use crate::engine::{Worker, WorkerState};

/// One served model.
#[derive(Debug)]
pub struct ModelEntry {
    /// What was configured.
    pub spec: ModelSpec,
    /// The thread that runs it; `None` when it could not even be started.
    pub worker: Result<Worker, String>,
}

impl ModelEntry {
    fn start(spec: ModelSpec) -> ModelEntry {
        let worker = Worker::spawn(&spec.id, spec.worker.clone()).map_err(|e| e.to_string());
        ModelEntry { spec, worker }
    }

    /// The id requests name it by.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Loading, ready or failed.
    pub fn state(&self) -> WorkerState {
        match &self.worker {
            Ok(worker) => worker.state(),
            Err(reason) => WorkerState::Failed(reason.clone()),
        }
    }
}

/// Request limits from `[server]`, applied on every request (and reloaded with the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body in bytes.
    pub max_body_bytes: usize,
    /// Most candidates per request.
    pub max_candidates: usize,
    /// Most tokens per request.
    pub max_tokens: usize,
    /// Most tokens one job of a request decodes.
    pub max_job_tokens: usize,
}

impl From<&ServerConfig> for Limits {
    fn from(server: &ServerConfig) -> Self {
        Limits {
            max_body_bytes: server.max_body_bytes,
            max_candidates: server.max_candidates,
            max_tokens: server.max_tokens,
            max_job_tokens: server.max_job_tokens,
        }
    }
}

/// The registry at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Served models by id.
    pub models: BTreeMap<String, Arc<ModelEntry>>,
    /// Where requests without `model` go.
    pub default_model: Option<String>,
    /// Request limits.
    pub limits: Limits,
    /// Why the config file on disk is not the one serving, if it is not.
    pub config_error: Option<String>,
    /// Reloaded models still loading; the entry in `models` serves until they are ready.
    pub pending: BTreeMap<String, Arc<ModelEntry>>,
}

/// The served models and limits; reloads replace the snapshot.
#[derive(Debug)]
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
    overrides: Overrides,
}

impl Registry {
    /// Starts a worker for every model of `config` (and `--model`), with the command line's
    /// `overrides` over the config now and at every reload.
    pub fn start(config: &Config, overrides: Overrides) -> Registry {
        let specs = config.model_specs(&overrides);
        let default_model = config.default_model_id(&specs, overrides.model.as_deref());
        let models = specs
            .into_iter()
            .map(|spec| (spec.id.clone(), Arc::new(ModelEntry::start(spec))))
            .collect();
        Registry {
            current: RwLock::new(Arc::new(Snapshot {
                models,
                default_model,
                limits: Limits::from(&config.server),
                config_error: None,
                pending: BTreeMap::new(),
            })),
            overrides,
        }
    }

    /// What the command line sets over every config.
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    /// The registry now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let current = Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner));
        let loaded = |entry: &Arc<ModelEntry>| !matches!(entry.state(), WorkerState::Loading);
        if current.pending.values().any(loaded) {
            self.promote_loaded();
            return Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner));
        }
        current
    }

    /// Moves reloaded models that finished loading from `pending` into `models`. One that failed
    /// to load is dropped instead: the model loaded before keeps serving, and the failure is
    /// reported as the snapshot's `config_error` (in `/health`) until the config changes again.
    fn promote_loaded(&self) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let (done, pending): (BTreeMap<_, _>, BTreeMap<_, _>) = current
            .pending
            .iter()
            .map(|(id, entry)| (id.clone(), Arc::clone(entry)))
            .partition(|(_, entry)| !matches!(entry.state(), WorkerState::Loading));
        if done.is_empty() {
            return;
        }
        let mut models = current.models.clone();
        let mut errors: Vec<String> = current.config_error.iter().cloned().collect();
        for (id, entry) in done {
            match entry.state() {
                WorkerState::Failed(reason) => {
                    let path = entry.spec.worker.path.display();
                    tracing::error!(
                        model = %id,
                        %path,
                        %reason,
                        "reload failed; the model loaded before keeps serving"
                    );
                    errors.push(failed_reload_message(&id, &entry.spec, &reason));
                }
                _ => {
                    tracing::info!(model = %id, "reloaded model now serves");
                    models.insert(id, entry);
                }
            }
        }
        *current = Arc::new(Snapshot {
            models,
            default_model: current.default_model.clone(),
            limits: current.limits,
            config_error: (!errors.is_empty()).then(|| errors.join("; ")),
            pending,
        });
    }

    /// Serves `config` from now on: unchanged models keep their worker, changed ones are loaded
    /// again (the old one serves until the new one is ready), removed ones unload after their
    /// in-flight requests. Returns what changed, for the log.
    pub fn apply(&self, config: &Config) -> Vec<String> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let specs = config.model_specs(&self.overrides);
        let default_model = config.default_model_id(&specs, self.overrides.model.as_deref());
        let mut changes = Vec::new();
        let mut models = BTreeMap::new();
        let mut pending = BTreeMap::new();
        for spec in specs {
            let waiting = current.pending.get(&spec.id).filter(|p| p.spec == spec);
            let entry = match current.models.get(&spec.id) {
                Some(old) if old.spec == spec => Arc::clone(old),
                Some(old) if matches!(old.state(), WorkerState::Ready(_)) => {
                    let fresh = match waiting {
                        Some(fresh) => Arc::clone(fresh),
                        None => {
                            changes.push(format!("reloading {}", spec.id));
                            Arc::new(ModelEntry::start(spec))
                        }
                    };
                    pending.insert(fresh.id().to_owned(), fresh);
                    Arc::clone(old)
                }
                Some(_) => {
                    changes.push(format!("reloaded {}", spec.id));
                    Arc::new(ModelEntry::start(spec))
                }
                None => {
                    changes.push(format!("added {}", spec.id));
                    Arc::new(ModelEntry::start(spec))
                }
            };
            models.insert(entry.id().to_owned(), entry);
        }
        for id in current.models.keys().filter(|id| !models.contains_key(*id)) {
            changes.push(format!("removed {id}"));
        }
        *current = Arc::new(Snapshot {
            models,
            default_model,
            limits: Limits::from(&config.server),
            config_error: None,
            pending,
        });
        changes
    }

    /// Records (or clears) a config file that could not be applied; the models keep serving.
    pub fn set_config_error(&self, error: Option<String>) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let snapshot = Snapshot {
            models: current.models.clone(),
            default_model: current.default_model.clone(),
            limits: current.limits,
            config_error: error,
            pending: current.pending.clone(),
        };
        *current = Arc::new(snapshot);
    }
}

/// What `/health` says about a reload of `id` that failed while its previous load kept serving.
fn failed_reload_message(id: &str, spec: &ModelSpec, reason: &str) -> String {
    format!(
        "model {id}: reloading {} failed ({reason}); the model loaded before keeps serving",
        spec.worker.path.display()
    )
}

impl Snapshot {
    /// The entry for `requested`, or the default model. Unknown: 404 listing what is served.
    pub fn resolve(&self, requested: Option<&str>) -> Result<Arc<ModelEntry>, ApiError> {
        let id = match requested {
            Some(id) => id,
            None => self.default_model.as_deref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "model_not_found",
                    "no model is served: add a [models.NAME] entry to the config or start with --model PATH",
                )
            })?,
        };
        self.models.get(id).cloned().ok_or_else(|| {
            let served: Vec<&str> = self.models.keys().map(String::as_str).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("model {id:?} is not served; served: {}", served.join(", ")),
            )
        })
    }
}
