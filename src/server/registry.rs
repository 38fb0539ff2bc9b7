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
    /// Models a reload removed that serve on until the models it added have loaded.
    pub handover: Option<Handover>,
}

/// A reload that removed ready models while the models it added were still loading (the first
/// `[models.X]` of a config replaces the built-in default model): the removed ones, and the default
/// model, serve on until the new ones are done loading, so requests never find nothing serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The removed models still serving (in `models`).
    pub retiring: Vec<String>,
    /// The new default model, once the new models are loaded.
    pub default_model: Option<String>,
}

impl Handover {
    /// Whether the models `models` waits for are done loading (ready or failed).
    fn done(models: &BTreeMap<String, Arc<ModelEntry>>) -> bool {
        !models
            .values()
            .any(|entry| matches!(entry.state(), WorkerState::Loading))
    }
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
                handover: None,
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
        let handed_over = current.handover.is_some() && Handover::done(&current.models);
        if current.pending.values().any(loaded) || handed_over {
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
        let handover = current
            .handover
            .clone()
            .filter(|_| Handover::done(&current.models));
        if done.is_empty() && handover.is_none() {
            return;
        }
        let mut models = current.models.clone();
        let mut default_model = current.default_model.clone();
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
        let mut still = current.handover.clone().filter(|_| handover.is_none());
        if let Some(handover) = handover {
            let ready = |id: &String| {
                models
                    .get(id)
                    .is_some_and(|e| matches!(e.state(), WorkerState::Ready(_)))
            };
            let added = models.keys().filter(|id| !handover.retiring.contains(id));
            if added.clone().any(ready) {
                for id in &handover.retiring {
                    models.remove(id);
                }
                tracing::info!(removed = ?handover.retiring, "the new models are loaded; the removed ones unload");
                default_model = handover.default_model;
            } else {
                // Not one new model loaded: the models before serve on, as after a failed reload.
                tracing::error!(kept = ?handover.retiring, "no model the config added could be loaded; the models before keep serving");
                errors.push(format!(
                    "no model the config added could be loaded; {} keep serving",
                    handover.retiring.join(", ")
                ));
            }
            still = None;
        }
        *current = Arc::new(Snapshot {
            models,
            default_model,
            limits: current.limits,
            config_error: (!errors.is_empty()).then(|| errors.join("; ")),
            pending,
            handover: still,
        });
    }

    /// Serves `config` from now on: unchanged models keep their worker, changed ones are loaded
    /// again (the old one serves until the new one is ready), removed ones unload after their
    /// in-flight requests. Returns what changed, for the log.
    pub fn apply(&self, config: &Config) -> Vec<String> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let specs = config.model_specs(&self.overrides);
        let default_model = reloaded_default(config, &specs, &self.overrides, &current);
        let mut changes = Vec::new();
        let mut models = BTreeMap::new();
        let mut pending = BTreeMap::new();
        for spec in specs {
            let waiting = current.pending.get(&spec.id).filter(|p| p.spec == spec);
            let entry = match current.models.get(&spec.id) {
                Some(old) if old.spec == spec => Arc::clone(old),
                // An RPC model's workers serve one process at a time: the new one could not load
                // while the old one holds them, so the old one goes first (no overlap).
                Some(old)
                    if matches!(old.state(), WorkerState::Ready(_))
                        && !uses_rpc(&old.spec)
                        && !uses_rpc(&spec) =>
                {
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
        // A removed model that is ready serves on while the models that replace it load.
        let loading = models
            .values()
            .any(|entry| matches!(entry.state(), WorkerState::Loading));
        let mut retiring = Vec::new();
        for (id, old) in &current.models {
            if models.contains_key(id) {
                continue;
            }
            if loading && matches!(old.state(), WorkerState::Ready(_)) {
                changes.push(format!("removing {id} once the new models are loaded"));
                retiring.push(id.clone());
            } else {
                changes.push(format!("removed {id}"));
            }
        }
        for id in &retiring {
            models.insert(id.clone(), Arc::clone(&current.models[id]));
        }
        let handover = (!retiring.is_empty()).then(|| Handover {
            retiring,
            default_model: default_model.clone(),
        });
        // Requests without `model` stay with the default model until the handover, if it is ready.
        let ready = |id: &&String| {
            models
                .get(*id)
                .is_some_and(|e| matches!(e.state(), WorkerState::Ready(_)))
        };
        let default_model = match &handover {
            Some(_) => current
                .default_model
                .clone()
                .filter(|id| ready(&id))
                .or(default_model),
            None => default_model,
        };
        *current = Arc::new(Snapshot {
            models,
            default_model,
            limits: Limits::from(&config.server),
            config_error: None,
            pending,
            handover,
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
            handover: current.handover.clone(),
        };
        *current = Arc::new(snapshot);
    }
}

/// Whether the model's layers go to RPC workers (it runs in a host process of its own).
fn uses_rpc(spec: &ModelSpec) -> bool {
    spec.worker
        .settings
        .rpc
        .as_ref()
        .is_some_and(|workers| !workers.is_empty())
}

/// The default model after a reload: `--model`'s or the config's `default_model` when served,
/// else the one that was the default, while it is still served (a model added by the reload,
/// even one alphabetically first, does not take over — it may not even load), else the config's
/// choice among what is served.
fn reloaded_default(
    config: &Config,
    specs: &[ModelSpec],
    overrides: &Overrides,
    current: &Snapshot,
) -> Option<String> {
    let served = |id: &String| specs.iter().any(|s| &s.id == id);
    let chosen = config.default_model_id(specs, overrides.model.as_deref());
    let explicit = overrides
        .model
        .as_deref()
        .map(crate::paths::model_id)
        .or_else(|| config.server.default_model.clone())
        .filter(served);
    explicit
        .or_else(|| current.default_model.clone().filter(served))
        .or(chosen)
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/endorm/config.toml")).expect("config")
    }

    fn default(registry: &Registry) -> Option<String> {
        registry.snapshot().default_model.clone()
    }

    #[test]
    fn a_model_added_by_a_reload_does_not_take_the_default() {
        let m = "[models.m]\npath = \"/nowhere/m.gguf\"\n";
        let a = "[models.a]\npath = \"/nowhere/a.gguf\"\n";
        let registry = Registry::start(&config(m), Overrides::default());
        assert_eq!(default(&registry).as_deref(), Some("m"));
        // `a` comes first alphabetically, and would have been the default of a fresh start.
        registry.apply(&config(&format!("{a}{m}")));
        assert_eq!(default(&registry).as_deref(), Some("m"));
        // A default the config names is taken.
        registry.apply(&config(&format!("[server]\ndefault_model = \"a\"\n{a}{m}")));
        assert_eq!(default(&registry).as_deref(), Some("a"));
        // The default removed: the config's choice among what is served.
        registry.apply(&config(m));
        assert_eq!(default(&registry).as_deref(), Some("m"));
    }
}
