//! The daemon's TOML config: `[server]`, `[defaults]` and named `[models.NAME]` entries.
//!
//! The file lives in the `directories` config location (`~/.config/endorm/config.toml` on Linux,
//! `~/Library/Application Support/endorm/config.toml` on macOS) unless `--config` names another.
//! `config/endorm.toml` in the repository is the documented default. With no file at all the
//! daemon serves the default model (or `--model PATH`) with the defaults below.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::worker::WorkerSettings;
use crate::paths;

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config {}: {error}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("the config {} is not valid: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the TOML parser says, with line and column.
        message: String,
    },
    /// The values are inconsistent.
    #[error("the config {} is not valid: {message}", path.display())]
    Invalid {
        /// The config file (or `<command line>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the daemon listens, and its request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Settings every model gets unless its own entry says otherwise.
    #[serde(default)]
    pub defaults: ModelDefaults,
    /// The models to serve, by id.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The Unix socket [default: `$XDG_RUNTIME_DIR/endorm/endorm.sock`]. Read at start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// A loopback TCP address to serve as well, e.g. `127.0.0.1:8765` (bearer token required).
    /// Read at start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The file holding the TCP bearer token [default: `token` beside the default socket].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The model requests without `model` go to [default: the default model's id if served, else
    /// the first id in alphabetical order].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most candidates (documents, queries) in one request (400 above).
    pub max_candidates: usize,
    /// Most tokens in one request, context and candidates together (422 above).
    pub max_tokens: usize,
    /// Requests that may wait for a model while it runs one (503 + Retry-After above).
    pub queue_depth: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: None,
            listen: None,
            token_file: None,
            default_model: None,
            max_body_bytes: 8 << 20,
            max_candidates: 128,
            max_tokens: 65_536,
            queue_depth: 64,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[defaults]`: per-model settings that a `[models.NAME]` entry may override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelDefaults {
    /// Context window in tokens [default: the model's, at most 4096].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<u32>,
    /// Tokens per llama.cpp decode [default: 512].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_batch: Option<u32>,
    /// CPU threads [default: one per core].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_threads: Option<u32>,
    /// Layers offloaded to the GPU [default: 0].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_gpu_layers: Option<u32>,
    /// Candidates decoded side by side [default: 64].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sequences: Option<u32>,
    /// Recent contexts kept in the prefix cache [default: 0, off].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_slots: Option<u32>,
    /// Most tokens the prefix cache keeps besides the last request's context [default: 4096].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_tokens: Option<u32>,
    /// Score queued requests together in one pass [default: false].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<bool>,
    /// System message for chat requests that name no `principle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principle: Option<String>,
}

/// `[models.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The GGUF file; `~/` is the home directory, a relative path is relative to the config file.
    pub path: PathBuf,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<u32>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_batch: Option<u32>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_threads: Option<u32>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_gpu_layers: Option<u32>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sequences: Option<u32>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_slots: Option<u32>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_tokens: Option<u32>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<bool>,
    /// As in `[defaults]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principle: Option<String>,
    /// A Jinja chat template that replaces the GGUF's; `""` disables chat format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

impl ModelConfig {
    /// The settings this entry sets itself.
    pub fn settings(&self) -> ModelDefaults {
        ModelDefaults {
            n_ctx: self.n_ctx,
            n_batch: self.n_batch,
            n_threads: self.n_threads,
            n_gpu_layers: self.n_gpu_layers,
            max_sequences: self.max_sequences,
            cache_slots: self.cache_slots,
            cache_tokens: self.cache_tokens,
            batching: self.batching,
            principle: self.principle.clone(),
        }
    }
}

/// One model to serve, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The id requests name it by.
    pub id: String,
    /// What the worker loads and how.
    pub worker: WorkerSettings,
    /// The configured principle.
    pub principle: Option<String>,
}

/// The default config file: `<config dir>/endorm/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "endorm").map(|p| p.config_dir().join("config.toml"))
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for model in config.models.values_mut() {
            model.path = resolve_path(&model.path, base);
        }
        for file in [&mut config.server.socket, &mut config.server.token_file]
            .into_iter()
            .flatten()
        {
            *file = resolve_path(file, base);
        }
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Checks the values that TOML types cannot.
    pub fn validate(&self) -> Result<(), String> {
        let server = &self.server;
        for (name, value) in [
            ("max_body_bytes", server.max_body_bytes),
            ("max_candidates", server.max_candidates),
            ("max_tokens", server.max_tokens),
            ("queue_depth", server.queue_depth),
        ] {
            if value == 0 {
                return Err(format!("[server] {name} must be at least 1"));
            }
        }
        if let Some(listen) = server.listen {
            check_loopback(listen)?;
        }
        check_settings("[defaults]", &self.defaults)?;
        for (id, model) in &self.models {
            check_id(id)?;
            check_settings(&format!("[models.{id}]"), &model.settings())?;
        }
        if let Some(default) = &server.default_model {
            if !self.models.is_empty() && !self.models.contains_key(default) {
                return Err(format!(
                    "[server] default_model = {default:?} is not one of the models: {}",
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The models to serve. `cli_model` (`serve --model PATH`) is served too, under its file's id.
    /// With neither models in the file nor `cli_model`, the installed default model is served.
    pub fn model_specs(&self, cli_model: Option<&Path>) -> Vec<ModelSpec> {
        let mut specs: Vec<ModelSpec> = self
            .models
            .iter()
            .map(|(id, model)| {
                self.spec(
                    id,
                    &model.path,
                    &model.settings(),
                    model.chat_template.clone(),
                )
            })
            .collect();
        let fallback = match cli_model {
            Some(path) => Some(path.to_owned()),
            None if specs.is_empty() => paths::default_model(),
            None => None,
        };
        if let Some(path) = fallback {
            let id = paths::model_id(&path);
            specs.retain(|spec| spec.id != id);
            specs.push(self.spec(&id, &path, &ModelDefaults::default(), None));
        }
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        specs
    }

    /// The id requests without `model` go to, among `specs`.
    pub fn default_model_id(
        &self,
        specs: &[ModelSpec],
        cli_model: Option<&Path>,
    ) -> Option<String> {
        let served = |id: &str| specs.iter().any(|s| s.id == id);
        cli_model
            .map(paths::model_id)
            .filter(|id| served(id))
            .or_else(|| self.server.default_model.clone().filter(|id| served(id)))
            .or_else(|| Some(paths::DEFAULT_MODEL_ID.to_owned()).filter(|id| served(id)))
            .or_else(|| specs.first().map(|s| s.id.clone()))
    }

    fn spec(
        &self,
        id: &str,
        path: &Path,
        own: &ModelDefaults,
        chat_template: Option<String>,
    ) -> ModelSpec {
        let d = &self.defaults;
        ModelSpec {
            id: id.to_owned(),
            worker: WorkerSettings {
                path: path.to_owned(),
                n_gpu_layers: own.n_gpu_layers.or(d.n_gpu_layers).unwrap_or(0),
                chat_template,
                n_ctx: own.n_ctx.or(d.n_ctx),
                n_batch: own.n_batch.or(d.n_batch),
                n_threads: own.n_threads.or(d.n_threads),
                max_sequences: own.max_sequences.or(d.max_sequences),
                cache_slots: own.cache_slots.or(d.cache_slots),
                cache_tokens: own.cache_tokens.or(d.cache_tokens),
                batching: own.batching.or(d.batching).unwrap_or(false),
                queue_depth: self.server.queue_depth,
            },
            principle: own.principle.clone().or_else(|| d.principle.clone()),
        }
    }
}

/// Refuses addresses other hosts could reach: the TCP listener is for local clients only.
pub fn check_loopback(address: SocketAddr) -> Result<(), String> {
    if address.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "refusing to listen on {address}: only loopback addresses (127.0.0.1, [::1]) are allowed"
        ))
    }
}

fn check_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "model id {id:?} must be 1 to 128 letters, digits, '.', '-' or '_'"
        ))
    }
}

fn check_settings(section: &str, settings: &ModelDefaults) -> Result<(), String> {
    for (name, value) in [
        ("n_ctx", settings.n_ctx),
        ("n_batch", settings.n_batch),
        ("n_threads", settings.n_threads),
        ("max_sequences", settings.max_sequences),
        ("cache_slots", settings.cache_slots),
    ] {
        if value == Some(0) {
            return Err(format!("{section} {name} must be at least 1"));
        }
    }
    if settings.cache_slots.is_some_and(|n| n > 128) {
        return Err(format!("{section} cache_slots must be at most 128"));
    }
    if settings.max_sequences.is_some_and(|n| n > 255) {
        return Err(format!(
            "{section} max_sequences must be at most 255 (llama.cpp's limit)"
        ));
    }
    Ok(())
}

fn resolve_path(path: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = directories::BaseDirs::new() {
            return home.home_dir().join(rest);
        }
    }
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/endorm/config.toml"))
    }

    #[test]
    fn the_documented_default_config_parses() {
        let text = include_str!("../config/endorm.toml");
        let config = parse(text).expect("config/endorm.toml is valid");
        assert_eq!(config.server, ServerConfig::default());
    }

    #[test]
    fn models_take_defaults_and_resolve_paths() {
        let config = parse(
            "[defaults]\nn_ctx = 1024\nprinciple = \"be brief\"\n\
             [models.a]\npath = \"a.gguf\"\nn_ctx = 2048\n\
             [models.b]\npath = \"/m/b.gguf\"\nprinciple = \"be kind\"\n",
        )
        .unwrap();
        let specs = config.model_specs(None);
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].worker.path, Path::new("/etc/endorm/a.gguf"));
        assert_eq!(specs[0].worker.n_ctx, Some(2048));
        assert_eq!(specs[0].principle.as_deref(), Some("be brief"));
        assert_eq!(specs[1].worker.n_ctx, Some(1024));
        assert_eq!(specs[1].principle.as_deref(), Some("be kind"));
        assert_eq!(config.default_model_id(&specs, None).as_deref(), Some("a"));
    }

    #[test]
    fn cli_model_is_served_and_default() {
        let config = parse("[models.a]\npath = \"/m/a.gguf\"\n").unwrap();
        let cli = Path::new("/x/Other-Model.Q4_K_M.gguf");
        let specs = config.model_specs(Some(cli));
        assert_eq!(specs.len(), 2);
        assert_eq!(
            config.default_model_id(&specs, Some(cli)).as_deref(),
            Some("other-model")
        );
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = parse("[server]\nmax_body = 3\n").unwrap_err().to_string();
        assert!(unknown.contains("max_body"), "{unknown}");
        let zero = parse("[server]\nqueue_depth = 0\n")
            .unwrap_err()
            .to_string();
        assert!(zero.contains("queue_depth"), "{zero}");
        let remote = parse("[server]\nlisten = \"0.0.0.0:80\"\n")
            .unwrap_err()
            .to_string();
        assert!(remote.contains("loopback"), "{remote}");
        let default = parse("[server]\ndefault_model = \"x\"\n[models.a]\npath = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(default.contains("default_model"), "{default}");
        let id = parse("[models.\"a b\"]\npath = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(id.contains("model id"), "{id}");
    }
}
